"""Open a built HTML book in headless Chromium (Debian's chromium + chromium-driver, through
Selenium) and report what a reader would hit: console errors, requests to anything but the
loopback address, images that did not load, internal links or anchors that do not exist."""
from __future__ import annotations

import functools
import http.server
import json
import re
import tempfile
import threading
from pathlib import Path
from urllib.parse import urldefrag, urlparse

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
LOCAL_SCHEMES = ("data", "blob", "about", "chrome", "devtools")


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def serve(folder: Path):
    """An HTTP server for ``folder`` on 127.0.0.1 (a free port), in a thread; returns (server, base url)."""
    handler = functools.partial(_Quiet, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


def driver(user_data: str):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).exists():
            raise FileNotFoundError(f"{path} is missing: install the Debian packages chromium and chromium-driver "
                                    "(make setup does)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1400,1000", f"--user-data-dir={user_data}"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)


def _ids(page: Path) -> set[str]:
    return set(re.findall(r'\bid="([^"]+)"', page.read_text(errors="replace")))


def check_book(html: Path, screenshots: Path, shoot: list[str]) -> dict:
    """Visit ``index.html`` and every page it links to in the book; returns counts and problems."""
    html = Path(html)
    server, base = serve(html)
    report = {"pages": 0, "images": 0, "internal_links": 0, "console_errors": [], "external_requests": [],
              "broken_images": [], "broken_links": []}
    screenshots.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        d = driver(profile)
        try:
            todo, seen = ["index.html"], set()
            while todo:
                page = todo.pop(0)
                if page in seen:
                    continue
                seen.add(page)
                d.get(base + page)
                d.execute_script("return document.readyState")
                report["pages"] += 1
                for entry in d.get_log("browser"):
                    if entry["level"] == "SEVERE":
                        report["console_errors"].append(f"{page}: {entry['message']}")
                for entry in d.get_log("performance"):
                    msg = json.loads(entry["message"])["message"]
                    if msg["method"] != "Network.requestWillBeSent":
                        continue
                    url = msg["params"]["request"]["url"]
                    u = urlparse(url)
                    if u.scheme not in LOCAL_SCHEMES and u.hostname not in ("127.0.0.1", "localhost"):
                        report["external_requests"].append(f"{page}: {url}")
                imgs = d.execute_script("return Array.from(document.images).map(i => [i.src, i.complete, i.naturalWidth])")
                report["images"] += len(imgs)
                report["broken_images"] += [f"{page}: {src}" for src, done, w in imgs if not done or w == 0]
                links = d.execute_script("return Array.from(document.querySelectorAll('a[href]')).map(a => a.href)")
                for link in links:
                    if not link.startswith(base):
                        continue
                    report["internal_links"] += 1
                    target, frag = urldefrag(link[len(base):])
                    target = target or page
                    path = html / target
                    if path.is_dir():
                        path = path / "index.html"
                    if not path.exists():
                        report["broken_links"].append(f"{page}: {link}")
                    elif frag and path.suffix == ".html" and frag not in _ids(path):
                        report["broken_links"].append(f"{page}: {link} (no anchor #{frag})")
                    elif path.suffix == ".html" and not target.startswith(("_static", "_sources", "_images")):
                        todo.append(str(path.relative_to(html)))
                stem = Path(page).stem
                if stem == "93-api":  # the API page as a reader sees it: rendered entries, no raw markup
                    report["api"] = d.execute_script(
                        "return {entries: Array.from(document.querySelectorAll('dl.py > dt[id]')).map("
                        "dt => [dt.id, dt.innerText]), text: document.body.innerText}")
                if stem in shoot:
                    d.save_screenshot(str(screenshots / f"{stem}.png"))
        finally:
            d.quit()
            server.shutdown()
    return report
