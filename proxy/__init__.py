"""Recording proxy: mitmproxy in reverse mode in front of an OpenAI-compatible server.

CLI: `python -m proxy --upstream http://127.0.0.1:8080 [--listen 127.0.0.1:8081] [--traces traces/]`.
Library: `RecordingProxy(upstream, traces_dir)` runs that CLI as a child process (context manager);
`proxy.server.serve(...)` runs it in-process; `proxy.addon.Recorder` is the mitmproxy addon.
"""

import core  # noqa: F401  (binds the fast BLAS before anything imports mlx)
from core.process import RecordingProxy

__all__ = ["RecordingProxy"]
