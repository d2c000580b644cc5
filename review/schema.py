"""What the review page's API accepts, as Pydantic models: every request body and query value is
checked here before any code uses it, so a malformed request (`?page=abc`, a JSON list, a
caption that is a number, a string where a list of tags belongs) is a 400 that says why, never a
traceback, and never a string taken as a list of its letters."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lorakit.errors import UserError

PAGE_SIZE = 120


class _Strict(BaseModel):
    # strict: no "5" for 5 or 5 for "5" in bodies; unknown fields refused (a misspelt one acts on nothing)
    model_config = ConfigDict(strict=True, extra="forbid")


class _Filters(BaseModel):
    """The gallery's filters: the page's query string, or a bulk edit's `query`."""
    q: str = ""
    folder: str = ""
    no_caption: str = ""
    flagged: str = ""
    duplicates: str = ""
    unreadable: str = ""
    # the page sends the field's text, in a query string and in a bulk body alike
    smaller_than: Annotated[int, Field(ge=1, le=1_000_000, strict=False)] | None = None


class QueryParams(_Filters):
    model_config = ConfigDict(extra="ignore")  # the page's other parameters (page, per_page) pass by


class Paging(BaseModel):
    model_config = ConfigDict(extra="ignore")
    page: Annotated[int, Field(ge=1, le=10_000_000)] = 1
    per_page: Annotated[int, Field(ge=1, le=500)] = PAGE_SIZE


class Completion(BaseModel):
    model_config = ConfigDict(extra="ignore")
    prefix: Annotated[str, Field(max_length=200)] = ""
    limit: Annotated[int, Field(ge=1, le=50)] = 20


class Rethreshold(BaseModel):
    model_config = ConfigDict(extra="ignore")
    rel: str = ""
    general: Annotated[float, Field(ge=0, le=1)] = 0.35
    character: Annotated[float, Field(ge=0, le=1)] = 0.85


# one tag: no comma (it would be two), no line break (it would start a caption's line 2), no NUL
Tag = Annotated[str, Field(max_length=500, pattern=r"^[^,\r\n\x00]*$")]
JobId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,40}$")]  # the page's name for a long request


class TrainerQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")
    rel: str = ""
    text: Annotated[str, Field(max_length=100_000)] | None = None  # the box's text; None: the file's


class ProgressQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")
    job: JobId | None = None


class CaptionBody(_Strict):
    rel: str
    version: str
    caption: Annotated[str, Field(max_length=1_000_000)]


class BulkFilter(_Filters):
    model_config = ConfigDict(strict=True, extra="forbid")


class BulkBody(_Strict):
    query: BulkFilter = BulkFilter()
    add: list[Tag] = []
    remove: list[Tag] = []
    replace: list[Annotated[list[Tag], Field(min_length=2, max_length=2)]] = []  # [old, new] pairs
    dry_run: bool = False  # the page shows how many captions change, and how, before it writes
    rels: list[str] | None = None  # images picked by hand: these, not the query's
    job: JobId | None = None  # progress is told under this id (GET /api/progress?job=)


class TagAutoBody(_Strict):
    """`tag auto` on the picked images, or on those the filters keep."""
    query: BulkFilter = BulkFilter()
    rels: list[str] | None = None
    mode: Literal["merge", "overwrite", "append", "skip"] = "merge"  # merge: hand-written tags stay
    general: Annotated[float, Field(ge=0.01, le=1)] | None = None  # None: the model's threshold
    job: JobId | None = None


class ImageBody(_Strict):
    rel: str


class UndoBody(_Strict):
    dry_run: bool = False  # the page shows what an undo reverts before it runs
    force: bool = False  # also over captions changed since (the page asked first)


BODIES: dict[str, type[BaseModel]] = {"caption": CaptionBody, "bulk": BulkBody, "exclude": ImageBody,
                                      "restore": ImageBody, "undo": UndoBody,
                                      "redo": UndoBody, "tag-auto": TagAutoBody}


def body(action: str, data) -> BaseModel:
    """The body of a write, checked (ValidationError: a 400 saying why)."""
    model = BODIES.get(action)
    if model is None:
        raise UserError(f"unknown action {action!r}")
    return model.model_validate(data)


def reason(exc: ValidationError) -> str:
    """The first problems of a request, in a line: `add: Input should be a valid list`."""
    parts = []
    for error in exc.errors()[:3]:
        where = ".".join(str(p) for p in error["loc"]) or "body"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)
