"""From scores to tags: the selection rules (thresholds, top-k, categories, include/exclude,
implications) and the output formats, shared by the UI, the API, the CLI and bulk."""
