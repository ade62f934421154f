"""The Gradio app: server start-up, fair share, the guarded URL fetcher, the tabs, the endpoints
and the MCP tools. Nothing outside this package imports it."""
