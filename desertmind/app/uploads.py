"""What the viewer's upload route accepts: images only, a bounded request, a bounded folder.

Gradio's ``/upload`` route stores any file of any type (up to ``max_file_size`` each, up to
1000 files a request) and keeps it until the process ends. :class:`UploadGuard` is an ASGI
middleware in front of it that

- refuses a request whose body is larger than one file may be (``Content-Length``, or counted
  as it streams in) before Gradio has stored more than that;
- lets at most :data:`MAX_IN_FLIGHT` uploads run at once (more wait their turn);
- checks every stored file's header once Gradio has stored it: a file that is not an image
  (or is larger than the readers' pixel limit) is deleted, forgotten by the page and answered
  with HTTP 415, so nothing but images stays;
- keeps the upload folder under :data:`MAX_TOTAL_BYTES`: the oldest uploads are deleted (and
  forgotten) first.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Awaitable, Callable, MutableSet
from pathlib import Path
from typing import Any

from desertmind.data.imageio import read_header
from desertmind.errors import DatasetError

#: the largest file an upload may hold (Gradio's ``max_file_size``; a 960x540 PNG is about
#: 1 MB, a 25 MP photo's JPEG about 10)
MAX_FILE_BYTES = 32 * 2**20
#: the most bytes one upload request may send: one such file plus the multipart envelope
MAX_REQUEST_BYTES = MAX_FILE_BYTES + 64 * 2**10
#: the most bytes the upload folder keeps; older uploads are deleted to stay under it
MAX_TOTAL_BYTES = 256 * 2**20
#: uploads answered at once
MAX_IN_FLIGHT = 2

Scope = dict[str, Any]
Message = dict[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]],
                   Awaitable[None]]


class _TooLarge(Exception):
    pass


class UploadGuard:
    """ASGI middleware for the viewer's Gradio app; see the module doc.

    Args:
        app: the wrapped ASGI app.
        folder: Gradio's upload folder (the viewer's own ``GRADIO_TEMP_DIR``).
        accepted: the page's ``upload_file_set``, the files a handler will read: refused and
            deleted files are removed from it.
    """

    def __init__(self, app: ASGIApp, folder: Path, accepted: MutableSet[str]) -> None:
        self.app = app
        self.folder = Path(folder)
        self.accepted = accepted
        self.turns = asyncio.Semaphore(MAX_IN_FLIGHT)

    async def __call__(self, scope: Scope, receive, send) -> None:
        if not (scope["type"] == "http" and scope["method"] == "POST"
                and scope["path"].rstrip("/").endswith("/upload")):
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_REQUEST_BYTES):
            await _answer(send, 413, f"an upload is at most {MAX_REQUEST_BYTES // 2**20} MB")
            return
        async with self.turns:
            try:
                await self._upload(scope, receive, send)
            finally:
                self.trim()

    async def _upload(self, scope: Scope, receive, send) -> None:
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > MAX_REQUEST_BYTES:
                raise _TooLarge
            return message

        held: list[Message] = []

        async def hold(message: Message) -> None:
            held.append(message)

        try:
            # held until Gradio's background move of the files into its cache has run too
            await self.app(scope, counted, hold)
        except _TooLarge:
            await _answer(send, 413, f"an upload is at most {MAX_REQUEST_BYTES // 2**20} MB")
            return
        status = next((m["status"] for m in held if m["type"] == "http.response.start"), 500)
        if status == 200:
            body = b"".join(m.get("body", b"") for m in held if m["type"] == "http.response.body")
            refused = self.refuse_non_images(json.loads(body))
            if refused:
                await _answer(send, 415, refused)
                return
        for message in held:
            await send(message)

    def refuse_non_images(self, paths: list[str]) -> str | None:
        """Delete every uploaded file of ``paths`` if one is not an image within the pixel
        limit, and say why; None when all are images."""
        problem = None
        for path in paths:
            try:
                read_header(path, "image")
            except DatasetError as e:
                problem = str(e).replace(str(path), Path(path).name)
                break
        if problem is not None:
            for path in paths:
                self.forget(Path(path))
        return problem

    def forget(self, path: Path) -> None:
        """Delete an upload (its folder, which Gradio made for it alone) and drop it from the
        files handlers may read."""
        self.accepted.discard(str(path))
        folder = path.parent
        if folder != self.folder and self.folder in folder.parents:
            shutil.rmtree(folder, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)

    def trim(self) -> None:
        """Delete the oldest files of the upload folder until it holds at most
        :data:`MAX_TOTAL_BYTES`."""
        files = []
        for path in self.folder.rglob("*"):
            try:
                if path.is_file():
                    stat = path.stat()
                    files.append((stat.st_mtime, stat.st_size, path))
            except OSError:  # removed meanwhile
                continue
        total = sum(size for _, size, _ in files)
        for _, size, path in sorted(files):
            if total <= MAX_TOTAL_BYTES:
                break
            self.forget(path)
            total -= size


async def _answer(send, status: int, text: str) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8")]})
    await send({"type": "http.response.body", "body": text.encode()})
