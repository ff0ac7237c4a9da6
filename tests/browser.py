"""Test tooling: drive a headless Chromium over the DevTools protocol (CDP), check and screenshot a
neuroglancer view (``tests/test_view.py``; ``examples/end_to_end.py --screenshot`` imports it from here).

For tests, CI and documentation pictures on machines without a display or GPU: open a page, evaluate
JavaScript, capture a screenshot, collect console errors. The DevTools endpoint listens on 127.0.0.1,
on a port Chromium picks itself (read back from ``DevToolsActivePort``); WebGL runs on SwiftShader,
Chromium's CPU renderer. Uses the system's Chromium (Debian: ``apt-get install chromium``), never a
downloaded browser build, and the small ``websocket-client`` package for the protocol.
"""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from chunked_fnet.errors import InputError
from processes import stop

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


class Chromium:
    """A headless Chromium process with one page; use as a context manager."""

    def __init__(self, binary: str, *, width: int = 1200, height: int = 900, start_timeout: float = 60.0) -> None:
        try:
            import websocket  # websocket-client
        except ImportError as exc:
            raise InputError("driving Chromium needs websocket-client: pip install -e '.[test]'") from exc

        self.profile = Path(tempfile.mkdtemp(prefix="chunked-fnet-chromium-"))
        args = [
            binary,
            "--headless=new",
            "--no-sandbox",  # tests run as root in CI
            "--use-angle=swiftshader",
            "--enable-unsafe-swiftshader",  # WebGL on the CPU renderer (opt-in since Chromium 137)
            "--ignore-gpu-blocklist",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            f"--user-data-dir={self.profile}",
            f"--window-size={width},{height}",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--mute-audio",
            "about:blank",
        ]
        self.log = self.profile / "chromium.log"
        with self.log.open("wb") as log:  # a file, not a pipe: an unread pipe would stall chromium
            self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log)
        self.console: list[str] = []
        self._ids = itertools.count(1)
        try:
            port = self._wait_for_port(start_timeout)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
                targets = json.load(r)
            page = next(t for t in targets if t.get("type") == "page")
            self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=30, suppress_origin=True)
            self.call("Runtime.enable")
            self.call("Page.enable")
        except BaseException:
            self.close()
            raise

    def _wait_for_port(self, timeout: float) -> int:
        marker = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.log.read_text(errors="replace")
                raise RuntimeError(f"chromium exited with {self.process.returncode}: {err[-2000:]}")
            if marker.exists():
                text = marker.read_text().split()
                if text:
                    return int(text[0])
            time.sleep(0.1)
        raise TimeoutError(f"chromium did not open its DevTools port within {timeout:g} s")

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one CDP command and wait for its answer, keeping console messages seen meanwhile."""
        ident = next(self._ids)
        self.ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"CDP {method}: {message['error']}")
                return message.get("result", {})
            self._event(message)

    def _event(self, message: dict[str, Any]) -> None:
        method = message.get("method")
        params = message.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            self.console.append(" ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", [])))
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            self.console.append(str(details.get("exception", {}).get("description") or details.get("text")))

    def navigate(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression (promises are awaited)."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self) -> bytes:
        return base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])

    def close(self) -> None:
        ws = getattr(self, "ws", None)
        if ws is not None:
            try:
                ws.close()
            except Exception:  # noqa: BLE001 - closing after a failure
                pass
        stop(self.process, timeout=10)
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: What the page says about each neuroglancer layer: data source load state (or error), where the
#: source puts the data (its output space: names, units, scales, bounds), messages, shader errors;
#: plus whether the viewer has drawn every visible chunk (``isReady``) and where its panels are.
NEUROGLANCER_STATUS = """(() => {
  const v = window.viewer;
  if (!v || v.layerManager.managedLayers.length === 0) return null;
  const messages = (list) => list ? [...(list.messages || []).map(m => ({severity: m.severity, text: String(m.message)})),
                                     ...[...(list.children || [])].flatMap(c => messages(c))] : [];
  const layers = v.layerManager.managedLayers.map(m => {
    const layer = m.layer;
    const sources = (layer ? layer.dataSources : []).map(d => {
      const s = d.loadState;
      if (s === undefined) return {state: 'loading'};
      if (s.error) return {state: 'error', error: String(s.error.message || s.error)};
      const o = s.transform.value.outputSpace;
      return {state: 'loaded', names: o.names, units: o.units, scales: Array.from(o.scales),
              lower: Array.from(o.bounds.lowerBounds), upper: Array.from(o.bounds.upperBounds), messages: messages(s.messages)};
    });
    const shaderError = layer && layer.shaderError ? layer.shaderError.value : undefined;
    return {name: m.name, visible: m.visible, sources, messages: layer ? messages(layer.messages) : [],
            shaderError: shaderError ? String(shaderError.message || shaderError) : null,
            renderLayers: layer ? layer.renderLayers.length : 0};
  });
  const panels = [...v.display.panels].map(p => { const r = p.element.getBoundingClientRect(); return [r.left, r.top, r.width, r.height]; });
  return {ready: v.isReady(), layers, panels};
})()"""


def all_loaded(status: dict[str, Any] | None) -> bool:
    """Every layer's source answered (loaded or failed) and every visible chunk is drawn."""
    return bool(status) and status["ready"] and all(  # type: ignore[index]
        s["state"] != "loading" for layer in status["layers"] for s in layer["sources"]  # type: ignore[index]
    )


def wait_for_neuroglancer(chrome: Chromium, condition: Any = all_loaded, timeout: float = 90.0, what: str = "every layer loaded") -> dict[str, Any]:
    """Poll the page's neuroglancer status until ``condition(status)``; a timeout says what was seen last."""
    deadline = time.monotonic() + timeout
    status = None
    while time.monotonic() < deadline:
        status = chrome.evaluate(NEUROGLANCER_STATUS)
        if status is not None and condition(status):
            return status
        time.sleep(0.3)
    raise TimeoutError(f"neuroglancer did not get {what} within {timeout:g} s; last status {json.dumps(status)}; console {chrome.console}")


def layer_problems(status: dict[str, Any]) -> list[str]:
    """One line per layer that failed to load, has a shader error or an error message."""
    problems = []
    for layer in status["layers"]:
        for source in layer["sources"]:
            if source["state"] != "loaded":
                problems.append(f"{layer['name']}: data source {source['state']}: {source.get('error', '')}")
            problems += [f"{layer['name']}: {m['text']}" for m in source.get("messages", []) if m["severity"] >= 2]
        if layer["shaderError"]:
            problems.append(f"{layer['name']}: shader error: {layer['shaderError']}")
        problems += [f"{layer['name']}: {m['text']}" for m in layer["messages"] if m["severity"] >= 2]
    return problems


def screenshot_neuroglancer(
    url: str, out: str | Path, *, width: int = 1200, height: int = 800, timeout: float = 90.0, overwrite: bool = False
) -> dict[str, Any]:
    """Open a neuroglancer viewer URL in headless Chromium, wait until every layer is drawn, save a PNG.

    Raises if a layer failed (naming it and why) or the page never finished loading."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise InputError(f"{out} already exists; pass overwrite=True to replace it")
    binary = find_chromium()
    if binary is None:
        raise InputError("no Chromium found (Debian: apt-get install chromium); it takes the screenshot")
    with Chromium(binary, width=width, height=height) as chrome:
        chrome.navigate(url)
        status = wait_for_neuroglancer(chrome, timeout=timeout)
        problems = layer_problems(status)
        if problems:
            raise InputError("neuroglancer could not show every layer: " + "; ".join(problems))
        time.sleep(0.5)  # one more frame after the last chunk arrived
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(chrome.screenshot())
    return status
