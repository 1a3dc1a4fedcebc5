"""A live page for ``watch --serve``: a small HTTP server (the standard library's, on a
thread) that shows the current frame beside its heatmap, the score trace, the part verdicts as
they come and the counters.

    page = LivePage("127.0.0.1", 8765).start()      # page.url: http://127.0.0.1:8765/
    ...  page.update(result, summary); page.add_verdicts(verdicts)   (watch does this)
    page.stop()

Endpoints: ``/`` the page (it polls the others twice a second), ``/frame.jpg`` the latest
scored frame beside its heatmap (503 until the first), ``/state.json`` the counters, the last
:data:`TRACE_FRAMES` scores and the last :data:`SHOWN_VERDICTS` part verdicts. The picture is
made when a browser asks for it, not for every frame, so an unwatched page costs the stream
nothing but keeping a reference to the last frame. It binds to 127.0.0.1 unless told
otherwise: the page shows the camera's pictures to whoever can reach the port.
"""

from __future__ import annotations

import io
import json
import math
import socket
import threading
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

from .inspector import FrameResult
from .parts import PartVerdict

TRACE_FRAMES = 300  # scores in the page's trace
SHOWN_VERDICTS = 50  # part verdicts in the page's table

_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>efficientad-fast watch</title>
<style>
body{font-family:sans-serif;margin:12px;background:#111;color:#eee}
#counters span{display:inline-block;margin-right:18px;font-size:18px}
#frame{max-width:100%;border:1px solid #444;min-height:120px}
canvas{background:#222;border:1px solid #444}
table{border-collapse:collapse;font-size:14px}td,th{padding:2px 8px;border-bottom:1px solid #333}
.reject{color:#ff5555;font-weight:bold}.pass{color:#55dd55}
</style></head><body>
<h2>efficientad-fast watch <small id="source"></small></h2>
<div id="counters"></div>
<p><img id="frame" alt="the latest frame beside its heatmap"></p>
<canvas id="trace" width="900" height="160"></canvas>
<h3>Parts</h3><table id="parts"><tr><th>part</th><th>frames</th><th>score</th><th>verdict</th></tr></table>
<script>
function draw(scores, threshold){
  const c=document.getElementById('trace'), g=c.getContext('2d'); g.clearRect(0,0,c.width,c.height);
  const vals=scores.filter(v=>v!==null); if(!vals.length) return;
  let lo=Math.min(...vals, threshold??Infinity), hi=Math.max(...vals, threshold??-Infinity); if(hi<=lo) hi=lo+1;
  const y=v=>c.height-8-(v-lo)/(hi-lo)*(c.height-16), x=i=>i*c.width/Math.max(1,scores.length-1);
  if(threshold!==null){g.strokeStyle='#ff5555';g.beginPath();g.moveTo(0,y(threshold));g.lineTo(c.width,y(threshold));g.stroke();}
  g.strokeStyle='#66ccff';g.beginPath();scores.forEach((v,i)=>{if(v!==null){i?g.lineTo(x(i),y(v)):g.moveTo(x(i),y(v));}});g.stroke();
}
async function tick(){
  try{
    const s=await (await fetch('state.json',{cache:'no-store'})).json();
    document.getElementById('source').textContent=s.source||'';
    const fps=s.fps===null?'-':s.fps.toFixed(1);
    document.getElementById('counters').innerHTML=
      `<span>frames ${s.frames}</span><span>fps ${fps}</span><span>dropped ${s.dropped}</span>`+
      `<span>alarms ${s.alarms}</span><span>parts ${s.parts}</span><span class="reject">rejected ${s.rejected}</span>`;
    draw(s.scores, s.threshold);
    const rows=s.verdicts.slice().reverse().map(v=>`<tr><td>${v.part}</td><td>${v.first_frame}-${v.last_frame}</td>`+
      `<td>${v.score===null?'-':v.score.toFixed(3)}</td><td class="${v.verdict}">${v.verdict??'-'}</td></tr>`).join('');
    document.getElementById('parts').innerHTML='<tr><th>part</th><th>frames</th><th>score</th><th>verdict</th></tr>'+rows;
    if(s.frames) document.getElementById('frame').src='frame.jpg?n='+s.frames;
  }catch(e){}
}
tick(); setInterval(tick, 500);
</script></body></html>
"""


class _Server(ThreadingHTTPServer):
    """IPv6 for an IPv6 host; a client that drops its connection is not a traceback on the
    watch's stderr."""

    def __init__(self, address: tuple[str, int], handler) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, handler)

    def handle_error(self, request, client_address) -> None:
        pass


class LivePage:
    """The page's state and its server (see the module docstring). ``port`` 0 takes a free
    one (``self.port`` says which once started)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 8765, source: str = "", map_threshold=None) -> None:
        if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
            raise ValueError(f"port must be an int from 0 to 65535, got {port!r}")
        self.host, self.port, self.source, self.map_threshold = host, port, source, map_threshold
        self._lock = threading.Lock()
        self._scores: deque[float | None] = deque(maxlen=TRACE_FRAMES)
        self._verdicts: deque[dict] = deque(maxlen=SHOWN_VERDICTS)
        self._latest: tuple[int, np.ndarray, np.ndarray] | None = None  # frame, image, map
        self._jpeg: tuple[int, bytes] | None = None  # made once per frame, whoever asks
        self._counters: dict = {"frames": 0, "fps": None, "dropped": 0, "alarms": 0, "parts": 0, "rejected": 0}
        self._threshold: float | None = None
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def start(self) -> LivePage:
        """Serve on a daemon thread (once; again is a no-op); OSError naming the address when
        it cannot be bound."""
        if self._server is not None:
            return self
        page = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 10  # a client that sends nothing is dropped, not waited for

            def do_GET(self) -> None:  # noqa: N802 (the standard library's name)
                page._answer(self)

            def log_message(self, format, *args) -> None:  # noqa: A002 - quiet: the watch prints its own line
                pass

        shown = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        try:
            self._server = _Server((self.host, self.port), Handler)
        except (OSError, OverflowError) as exc:
            why = getattr(exc, "strerror", None) or exc
            raise OSError(getattr(exc, "errno", None), f"--serve {shown}: cannot listen there ({why})") from exc
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="efficientad-fast-page", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving (the watch ended) and free the port."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> LivePage:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- what watch tells it ----------------------------------------------------------------

    def update(self, result: FrameResult, summary: dict, threshold: float | None = None) -> None:
        """A frame read (scored or not) and the watch's counters so far."""
        with self._lock:
            self._scores.append(result.score)
            if result.image is not None and result.anomaly_map is not None:
                self._latest = (result.frame, result.image, result.anomaly_map)
            for key in ("frames", "fps", "dropped", "alarms", "parts", "rejected"):
                if key in summary:
                    self._counters[key] = summary[key]
            self._threshold = threshold

    def add_verdicts(self, verdicts: list[PartVerdict]) -> None:
        with self._lock:
            self._verdicts.extend(v.to_json() for v in verdicts)

    # -- what a browser asks for ------------------------------------------------------------

    def state(self) -> dict:
        with self._lock:
            return {
                **self._counters,
                "source": self.source,
                "threshold": self._threshold,
                "scores": [v if v is None or math.isfinite(v) else None for v in self._scores],  # JSON: no NaN
                "verdicts": list(self._verdicts),
            }

    def frame_jpeg(self) -> bytes | None:
        """The latest scored frame beside its heatmap, as JPEG; None before the first."""
        from PIL import Image

        from ..heatmaps import heatmap_overlay

        with self._lock:
            latest, made = self._latest, self._jpeg
        if latest is None:
            return None
        frame, image, amap = latest
        if made is not None and made[0] == frame:
            return made[1]
        buffer = io.BytesIO()
        Image.fromarray(heatmap_overlay(image, amap, self.map_threshold)).save(buffer, "JPEG", quality=85)
        with self._lock:
            self._jpeg = (frame, buffer.getvalue())
        return self._jpeg[1]

    def _answer(self, request: BaseHTTPRequestHandler) -> None:
        path = request.path.split("?", 1)[0]
        if path in ("/", "/index.html"):
            body, kind, status = _PAGE.encode(), "text/html; charset=utf-8", 200
        elif path == "/state.json":
            body, kind, status = json.dumps(_json_safe(self.state()), allow_nan=False).encode(), "application/json", 200
        elif path == "/frame.jpg":
            jpeg = self.frame_jpeg()
            body, kind, status = (jpeg, "image/jpeg", 200) if jpeg else (b"no frame scored yet", "text/plain", 503)
        else:
            body, kind, status = b"not found", "text/plain", 404
        request.send_response(status)
        request.send_header("Content-Type", kind)
        request.send_header("Content-Length", str(len(body)))
        request.send_header("Cache-Control", "no-store")
        request.end_headers()
        request.wfile.write(body)


def _json_safe(value):
    """``value`` with every non-finite float made None (JSON has no NaN or Infinity)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``PORT`` (on 127.0.0.1) for ``--serve``; ValueError otherwise."""
    host, _, port = str(text).rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if not (port.isascii() and port.isdigit()) or not 0 <= int(port) <= 65535:
        raise ValueError(f"--serve takes PORT or HOST:PORT (e.g. 127.0.0.1:8765), got {text!r}")
    return host, int(port)


__all__ = ["SHOWN_VERDICTS", "TRACE_FRAMES", "LivePage", "parse_address"]
