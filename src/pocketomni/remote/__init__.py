"""The chat API over HTTP: `po.Omni.connect(base_url)` talks to any OpenAI-compatible server
(`pocketomni serve`, vLLM-Omni, llama-server) and yields the same events as a local model."""
