"""The review page's server (Starlette): the page, its JSON API, and the dataset's images and
thumbnails, nothing else.

Safety: a write needs the per-run random token the page carries (header X-Lorakit-Token) in a
JSON request from the page's own origin, so another website open in the same browser cannot post
to it (a cross-site fetch with a custom header needs a CORS preflight, which this server never
grants; the Origin and Host are checked too, against DNS rebinding). A file is served only when
it is an image of the dataset (found by the listing, resolved inside DIR) or its thumbnail.
`read_only` refuses every write.

Every route, not only the page, answers only to the Host it was bound as when listening on
loopback (a DNS-rebinding site reads nothing). Beyond loopback (`--host`), where any name may
reach it, every route needs a key instead: the terminal prints the address with a one-time `key`,
which the page trades for an HttpOnly, SameSite=Strict cookie; the write token is served only to
a browser that holds it. Every request body and query value is checked against a schema
(review/schema.py): a malformed one is a 400 with the reason, never a traceback.
"""

from __future__ import annotations

import secrets
import threading
from pathlib import Path

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from lorakit.errors import UserError
from lorakit.review import schema, writes
from lorakit.review.dataset import Dataset, Query
from lorakit.review.tagger_routes import TaggerRoutes
from lorakit.review.trainer import TrainerView
from lorakit.tagging.auto import AutoOptions
from lorakit.tagging.edit import EditOps

HERE = Path(__file__).parent


class Review(TaggerRoutes):
    def __init__(self, data: Dataset, read_only: bool = False, relations=None, vocab: str = "danbooru",
                 trainer: TrainerView | None = None, tagger: AutoOptions | None = None):
        self.data, self.read_only, self.relations, self.vocab = data, read_only, relations, vocab
        self.trainer = trainer or TrainerView(data.root)
        self.tagger = tagger or AutoOptions(vocab)  # `tag auto` from the page: the CLI's defaults, or review's options
        self.progress: dict[str, dict] = {}  # job id (the page's) -> what a long request has done so far
        self._folders: tuple[int, list] | None = None  # the trainer's per-folder view, for one set of entries
        self._writing = threading.Lock()  # writes run on worker threads, one at a time
        self.cookie = COOKIE  # per port once bound: two servers on one machine keep their own keys
        self.token = secrets.token_urlsafe(32)
        self.allowed_hosts: set[str] = set()  # host:port the server answers as (set when it binds)
        self.key: str | None = None  # beyond loopback: the secret the printed address carries
        from jinja2 import Template

        self.template = Template((HERE / "templates" / "index.html").read_text(encoding="utf-8"), autoescape=True)

    # --- guards ----------------------------------------------------------------------------------

    def _host_ok(self, request: Request) -> bool:
        return not self.allowed_hosts or request.headers.get("host", "") in self.allowed_hosts

    def _refusal(self, request: Request) -> Response | None:
        """What every request must pass, whatever its route."""
        if not self._host_ok(request):
            return Response("unknown host", 421)
        if self.key is None:
            return None
        if _same(request.cookies.get(self.cookie, ""), self.key):
            return None
        if request.url.path == "/" and _same(request.query_params.get("key", ""), self.key):
            return None  # the page trades the key for the cookie
        return Response("open the address lorakit review printed in its terminal (it carries the key)", 401)

    def guarded(self, app):
        async def guard(scope, receive, send):
            if scope["type"] == "http":
                refused = self._refusal(Request(scope))
                if refused is not None:
                    await refused(scope, receive, send)
                    return
            await app(scope, receive, send)
        return guard

    def _write_refusal(self, request: Request) -> Response | None:
        if self.read_only:
            return JSONResponse({"error": "read-only: started with --read-only"}, 403)
        if not _same(request.headers.get("x-lorakit-token", ""), self.token):
            return JSONResponse({"error": "missing or wrong token: reload the page"}, 403)
        origin = request.headers.get("origin")
        host = request.headers.get("host", "")
        if origin is not None and origin not in (f"http://{host}", f"https://{host}"):
            return JSONResponse({"error": f"cross-origin request from {origin} refused"}, 403)
        if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
            return JSONResponse({"error": "cross-site request refused"}, 403)
        if not request.headers.get("content-type", "").startswith("application/json"):
            return JSONResponse({"error": "writes are JSON requests"}, 415)
        return None

    def _entry(self, rel: str):
        entry = self.data.entries.get(rel)
        if entry is None:
            return None
        try:
            path = (self.data.root / rel).resolve()
        except (OSError, RuntimeError):  # a link loop: nothing to serve
            return None
        return entry if path.is_relative_to(self.data.root.resolve()) else None  # a symlink out: refused

    # --- reading --------------------------------------------------------------------------------

    @staticmethod
    def _query(params) -> Query:
        q = schema.QueryParams.model_validate(dict(params))
        return Query(q.q, q.folder or None, q.no_caption == "1", q.flagged == "1", q.duplicates == "1",
                     q.smaller_than, q.unreadable == "1")

    def _item(self, rel: str) -> dict:
        e = self.data.entries[rel]
        f = e.facts
        return {"rel": rel, "folder": e.folder, "caption": e.caption, "tags": e.tags,
                "version": e.version, "text": e.text,
                "width": f.width if f else None, "height": f.height if f else None,
                "error": f.error if f else ""}

    async def page(self, request: Request) -> Response:
        if self.key is not None and "key" in request.query_params:  # the guard checked it
            response = RedirectResponse("/", 303)
            response.set_cookie(self.cookie, self.key, httponly=True, samesite="strict", path="/")
            return response
        return HTMLResponse(self.template.render(
            token=self.token, root=str(self.data.root), read_only=self.read_only, vocab=self.vocab),
            headers={"Cache-Control": "no-store", "X-Frame-Options": "DENY"})

    async def images(self, request: Request) -> Response:
        return await run_in_threadpool(self._images, request)  # grouping 20,000 images must not stop the server

    def _images(self, request: Request) -> Response:
        job = schema.ProgressQuery.model_validate(dict(request.query_params)).job
        try:
            chosen = self.data.select(self._query(request.query_params), self._reporter(job, "near-duplicates"))
        finally:
            self.progress.pop(job, None)
        paging = schema.Paging.model_validate(dict(request.query_params))
        page, per_page = paging.page, paging.per_page
        items = [self._item(r) for r in chosen[(page - 1) * per_page: page * per_page]]
        if self._query(request.query_params).duplicates:  # which group each belongs to, to show them apart
            group_of = {rel: k for k, group in enumerate(self.data.duplicate_groups(), 1) for rel in group}
            for item in items:
                item["group"] = group_of.get(item["rel"])
        return JSONResponse({"count": len(chosen), "total": len(self.data.entries), "page": page,
                             "pages": max(1, -(-len(chosen) // per_page)), "items": items,
                             "folders": self.data.folders()})

    async def tags(self, request: Request) -> Response:
        query = self._query(request.query_params)
        tags = await run_in_threadpool(self.data.tag_panel, query, self.relations)
        return JSONResponse({"tags": tags})  # all of them: the page shows the rows in view

    async def complete(self, request: Request) -> Response:
        from lorakit.review.completion import VocabIndex, complete
        from lorakit.tagging.spelling import key

        asked = schema.Completion.model_validate(dict(request.query_params))
        index = getattr(self, "_vocab_index", None)
        if self.relations is None:
            index = None
        elif index is None or index.relations is not self.relations:  # indexed once (~1 s for 100k names)
            index = self._vocab_index = await run_in_threadpool(VocabIndex, self.relations)
        tags = await run_in_threadpool(complete, self.data.by_tag, index, key(asked.prefix), asked.limit)
        return JSONResponse({"tags": tags})

    async def detail(self, request: Request) -> Response:
        try:
            item = await run_in_threadpool(self._detail, request.query_params.get("rel", ""))
        except KeyError:  # the image went away meanwhile (excluded, or gone from the folder)
            item = None
        return JSONResponse(item) if item is not None else JSONResponse({"error": "no such image"}, 404)

    def _detail(self, rel: str) -> dict | None:
        if self._entry(rel) is None:
            return None
        # edited by another program since: show what is there now (unless a write, which reads it anyway, is under way)
        if self.data.changed_on_disk(rel) and self._writing.acquire(blocking=False):
            try:
                self.data.refresh(rel)
            finally:
                self._writing.release()
        item = self._item(rel)
        f = self.data.entries[rel].facts
        item.update({"format": f.format if f else None, "score": f.score if f else None,
                     "file_size": f.file_size if f else None, "probabilities": self._probabilities(rel)})
        if f is not None and not f.error:
            text = item["text"] if item["caption"] is not None else None
            item["trainer"] = self.trainer.image(rel, f.width, f.height, text)
        return item

    async def rescan(self, request: Request) -> Response:
        """The page asks when it opens and when it comes back into view: edits made elsewhere (tag
        edit, an editor, images added or removed) show without a restart."""
        return JSONResponse(await run_in_threadpool(self._rescan))

    def _rescan(self) -> dict:
        from lorakit.review.facts import make_facts

        with self._writing:  # not while a write changes the same entries
            before = (id(self.data.entries), id(self.data.by_tag))
            new = self.data.rescan()
            if new:
                self.data.cache.make_folder()
                for rel in new:  # a few images added meanwhile: made here, one by one
                    self.data.cache.put(rel, make_facts((str(self.data.root / rel), str(self.data.cache.folder),
                                                         str(self.data.root))))
                    self.data.entries[rel].facts = self.data.cache.get(rel)
                self.data.cache.save()
            return {"changed": before != (id(self.data.entries), id(self.data.by_tag))}

    async def trainer_image(self, request: Request) -> Response:
        """The trainer's view of one image with the caption as the page's box holds it now (the
        token counts follow the typing, before anything is saved)."""
        asked = schema.TrainerQuery.model_validate(dict(request.query_params))
        entry = self._entry(asked.rel)
        f = entry.facts if entry is not None else None
        if f is None or f.error:
            return JSONResponse({"error": "no such readable image"}, 404)
        text = asked.text if asked.text is not None else (entry.text if entry.caption is not None else None)
        return JSONResponse(await run_in_threadpool(self.trainer.image, asked.rel, f.width, f.height, text))

    async def training(self, request: Request) -> Response:
        """The trainer's settings and its per-folder view (images x repeats, bucket histogram)."""
        return JSONResponse({"settings": self.trainer.settings(),
                             "folders": await run_in_threadpool(self._training_folders)})

    def _training_folders(self) -> list:
        entries = self.data.entries  # a new dict after every reload: the view is made again for it
        if self._folders is None or self._folders[0] != id(entries):
            sizes = {rel: (e.folder, e.facts.width, e.facts.height) for rel, e in entries.items()
                     if e.facts and not e.facts.error}
            self._folders = (id(entries), self.trainer.folders(sizes))
        return self._folders[1]

    async def progress_of(self, request: Request) -> Response:
        asked = schema.ProgressQuery.model_validate(dict(request.query_params))
        return JSONResponse(self.progress.get(asked.job, {}))

    def _reporter(self, job: str | None, what: str):
        """A callback (stage, done, total) that a long request calls as it goes: the page polls
        /api/progress with the job id it sent."""
        if not job:
            return None

        def report(stage: str, done: int, total: int) -> None:
            self.progress[job] = {"what": what, "stage": stage, "done": done, "total": total}
        return report

    async def file(self, request: Request) -> Response:
        rel = request.query_params.get("rel", "")
        if self._entry(rel) is None:
            return Response("not an image of this dataset", 404)
        return FileResponse(self.data.root / rel)

    async def thumb(self, request: Request) -> Response:
        rel = request.query_params.get("rel", "")
        path = self.data.cache.thumb(rel) if self._entry(rel) is not None else None
        if path is None:
            return Response("no thumbnail", 404)
        return FileResponse(path, headers={"Cache-Control": "max-age=86400"})

    # --- writing --------------------------------------------------------------------------------

    async def write(self, request: Request) -> Response:
        refused = self._write_refusal(request)
        if refused is not None:
            return refused
        action = request.path_params["action"]
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"error": "not JSON"}, 400)
        parsed = None
        try:
            parsed = schema.body(action, body)
            # off the event loop, so the page can ask how far it got; one write at a time
            return JSONResponse(await run_in_threadpool(self._one_write, action, parsed))
        except writes.Conflict as c:  # the entry was read again: its version lets "save mine anyway" through
            entry = self.data.entries.get(parsed.rel)
            return JSONResponse({"error": "the caption changed on disk since the page read it; nothing was written",
                                 "disk": c.disk, "yours": c.yours, "version": entry.version if entry else ""}, 409)
        except Busy as exc:
            return JSONResponse({"error": str(exc)}, 423)
        except (UserError, OSError) as exc:
            return JSONResponse({"error": str(exc)}, 400)
        finally:
            self.progress.pop(getattr(parsed, "job", None), None)

    def _one_write(self, action: str, body) -> dict:
        # a write waits 2 s for the one under way (as two commands on one folder do), then says
        # so: queued writes behind a long tagger run would hold every worker thread of the server
        if not self._writing.acquire(timeout=2):
            raise Busy("busy: another change (the tagger, a bulk edit) is running; nothing was written, "
                       "try again when it is done")
        try:
            return self._do(action, body)
        finally:
            self._writing.release()

    def _do(self, action: str, body) -> dict:
        if action == "caption":
            rel = body.rel
            if self._entry(rel) is None:
                raise UserError("no such image")
            return {"version": writes.save_caption(self.data, rel, body.version, body.caption), **self._item(rel)}
        if action == "bulk":
            ops = EditOps(add=[t for t in body.add if t.strip()], remove=[t for t in body.remove if t.strip()],
                          replace=[(a, b) for a, b in body.replace if a.strip() and b.strip()])
            asked = body.rels if body.rels is not None else self.data.select(self._query(body.query))
            chosen = [rel for rel in dict.fromkeys(asked) if self._entry(rel) is not None]
            changed, diff, failed = writes.bulk_edit(self.data, chosen, ops, body.dry_run,
                                                     self._reporter(body.job, "bulk edit"))
            return {"changed": changed, "of": len(chosen), "sample": diff[:5], "failed": failed[:20]}
        if action == "tag-auto":
            asked = body.rels if body.rels is not None else self.data.select(self._query(body.query))
            chosen = [rel for rel in dict.fromkeys(asked) if self._entry(rel) is not None]
            return writes.tag_auto(self.data, chosen, self.tagger, body.mode, body.general,
                                   self._reporter(body.job, "tag auto"))
        if action == "exclude":
            rel = body.rel
            if self._entry(rel) is None:
                raise UserError("no such image")
            return {"excluded": rel, "notes": writes.exclude(self.data, rel)}
        if action == "restore":
            writes.restore(self.data, body.rel)
            return {"restored": body.rel}
        if action in ("undo", "redo"):
            from lorakit.tagging.backups import redo, undo

            report = (undo if action == "undo" else redo)(self.data.root, body.dry_run, body.force)
            if not body.dry_run:
                self.data.reload()
            conflicts = [o.path for o in report.failed if o.details.get("changed_since")]
            failed = [o for o in report.failed if not (body.dry_run and o.details.get("changed_since"))]
            if failed:
                raise UserError("; ".join(f"{o.path}: {o.message}" for o in failed[:5]))
            return {"notes": report.notes, "conflicts": conflicts,
                    "restored": [o.path for o in report.outcomes if o.message != "unchanged"]}
        raise UserError(f"unknown action {action!r}")

    async def excluded(self, request: Request) -> Response:
        try:  # a walk of a folder: off the loop
            return JSONResponse({"excluded": await run_in_threadpool(writes.excluded, self.data.root)})
        except UserError as exc:
            return JSONResponse({"error": str(exc), "excluded": []}, 400)

    def app(self) -> Starlette:
        routes = [
            Route("/", self.page), Route("/api/images", self.images), Route("/api/tags", self.tags),
            Route("/api/complete", self.complete), Route("/api/image", self.detail),
            Route("/api/excluded", self.excluded), Route("/api/{action}", self.write, methods=["POST"]),
            Route("/api/rethreshold", self.rethreshold), Route("/api/training", self.training),
            Route("/api/progress", self.progress_of), Route("/api/trainer-image", self.trainer_image),
            Route("/api/rescan", self.rescan),
            Route("/file", self.file), Route("/thumb", self.thumb),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ]
        app = Starlette(routes=routes, exception_handlers={ValidationError: _invalid})
        return self.guarded(app)


COOKIE = "lorakit_key"


class Busy(UserError):
    pass


def _same(given: str, secret: str) -> bool:
    """A constant-time comparison that takes any text (compare_digest refuses non-ASCII str)."""
    return secrets.compare_digest(given.encode("utf-8", "surrogateescape"), secret.encode("utf-8"))


async def _invalid(request: Request, exc: ValidationError) -> Response:
    """A request that does not fit its schema: 400, saying which field and why."""
    return JSONResponse({"error": schema.reason(exc)}, 400)
