"""The Gradio app: start-up, fair share, guarded URL fetcher, tabs, endpoints, MCP tools; nothing outside imports it."""
