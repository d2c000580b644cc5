"""The tagger's part of the review page's server: `tag auto`'s stored probabilities for one image,
and the caption `tag auto --rethreshold` would write at other thresholds. A mixin of
review/server.py's Review, kept apart because it reads the tagger's files, not the dataset's."""

from __future__ import annotations

from pathlib import Path

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from lorakit.errors import UserError
from lorakit.review import schema


class TaggerRoutes:
    def _probabilities(self, rel: str) -> dict | None:
        """`tag auto`'s sidecar for this image, when it left one: its tags over 0.05 (none from
        a damaged one: the image still opens)."""
        from lorakit.tagging.auto import SIDECAR, load_sidecar

        try:
            found = load_sidecar((self.data.root / rel).parent / SIDECAR, only=Path(rel).name)
        except UserError:
            return None
        if found is None or Path(rel).name not in found[2]:
            return None
        info, model, rows = found
        row = rows[Path(rel).name]
        order = row.argsort()[::-1]
        return {"model": model, "tags": [{"tag": info.names[i].replace("_", " "), "p": round(float(row[i]), 4),
                                          "category": info.categories[i]} for i in order if row[i] >= 0.05][:200]}

    async def rethreshold(self, request: Request) -> Response:
        """The caption `tag auto --rethreshold` would write for this image at these thresholds:
        the same selection and composition (trigger first, implied tags pruned), from its sidecar."""
        from lorakit.captions import instance_token
        from lorakit.tagging.auto import SIDECAR, load_sidecar
        from lorakit.tagging.compose import Thresholds, Writing, compose, select

        asked = schema.Rethreshold.model_validate(dict(request.query_params))
        if self._entry(asked.rel) is None:
            return JSONResponse({"error": "no such image"}, 404)
        name = Path(asked.rel).name
        try:  # off the loop: a folder's sidecar is unpacked to find the row
            found = await run_in_threadpool(load_sidecar, (self.data.root / asked.rel).parent / SIDECAR, name)
        except UserError as exc:
            return JSONResponse({"error": str(exc)}, 404)
        if found is None or name not in found[2]:
            return JSONResponse({"error": "the tagger left no probabilities for this image"}, 404)
        info, _, rows = found
        chosen = select(rows[name], info, Thresholds(asked.general, asked.character))
        tags = compose(chosen, [], Writing(), self.relations, instance_token(Path(asked.rel)))
        return JSONResponse({"tags": tags or [], "rating": chosen.rating})

