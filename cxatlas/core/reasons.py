"""The quarantine reason catalogue: every reason a job writes to ``quarantine``, what it means and what the user does.

One entry per (stage, code). The README's "Bad input" tables are generated from it (``cxatlas reasons
--update-readme README.md`` rewrites the text between the ``<!-- reasons:<stage> -->`` markers) and ``cxatlas reasons``
prints it. ``tests/core/test_reasons.py`` fails when a job writes a reason the catalogue does not hold, when the
catalogue holds one no job writes, and when the README tables drift from it.

Pure data and string formatting: no Spark, no I/O (``core/`` is vocabulary).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

#: The stages that quarantine, in data-flow order (the ``stage`` column of ``quarantine``).
STAGES: tuple[str, ...] = ("ingest", "import", "annotate", "train")

#: How each stage's table is headed in the README and in ``cxatlas reasons``.
STAGE_TITLES: dict[str, str] = {
    "ingest": "Ingest (`cxatlas ingest`), per manifest row",
    "import": "Import (`cxatlas import-annotations`), per row",
    "annotate": "Annotate (`cxatlas annotate`), per video",
    "train": "Train (`cxatlas train`, `cxatlas transfer`), per rating row or stimulus",
}


@dataclass(frozen=True)
class Reason:
    """One quarantine reason: ``code`` (the ``reason`` column), the ``stage`` writing it, what it ``means`` and
    what the user ``does`` about it."""

    code: str
    stage: str
    meaning: str
    action: str


_REINGEST = "replace the file and re-ingest its row, or leave it quarantined"
_RETRY = ("report it (the detail holds the error), then retry with `--set annotate.retry_quarantined=true`")
_URI_FIX = "fix the `uri` in the manifest (or the policy settings, if the location is legitimate) and ingest it again"
_URI_ANNOTATE = ("the row was ingested before the policy or under other settings: fix its `uri` and re-ingest it, "
                 "or widen `ingest.allowed_schemes` / `ingest.allowed_roots` if the location is legitimate")

CATALOGUE: tuple[Reason, ...] = (
    # ---- ingest: cxatlas/stages/ingest/ (validate, classify, shared uris, replaced rows), core/uris.py, core/geo.py
    Reason("malformed_record", "ingest", "the reader could not parse the line (broken quoting, bad JSON)",
           "fix the line in the manifest and ingest it again"),
    Reason("missing_video_id", "ingest", "no `video_id` (null or blank)", "give the row an id"),
    Reason("missing_upload_time", "ingest", "no `upload_time`", "write it as ISO 8601 (`2020-05-01T12:00:00Z`)"),
    Reason("malformed_upload_time", "ingest", "`upload_time` is not a timestamp",
           "write it as ISO 8601 (`2020-05-01T12:00:00Z`)"),
    Reason("invalid_withdrawn", "ingest", "`withdrawn` is not true/false (1/0 and yes/no are accepted too)",
           "write `true` or `false`"),
    Reason("missing_uri", "ingest", "the row has no `uri` (null or blank)", "give the row the video's location"),
    Reason("uri_scheme_refused", "ingest",
           "the uri's scheme is not in `ingest.allowed_schemes` (http(s) is refused unless listed)", _URI_FIX),
    Reason("uri_not_absolute", "ingest",
           "a local path that is not absolute (it would be resolved against a worker's directory)",
           "give an absolute path or a URI"),
    Reason("uri_system_path", "ingest", "a path under /proc, /sys or /dev: pseudo-files and devices, never uploads",
           "fix the `uri`; these locations are refused whatever the settings"),
    Reason("uri_outside_roots", "ingest", "the uri is not under any of `ingest.allowed_roots`", _URI_FIX),
    Reason("missing_coordinates", "ingest", "`lat` or `lon` missing", "give both coordinates in decimal degrees"),
    Reason("invalid_coordinates", "ingest", "`lat` or `lon` is text or NaN",
           "give both coordinates in decimal degrees"),
    Reason("coordinates_out_of_range", "ingest", "latitude outside ±90 or longitude outside ±180",
           "check the columns are not scaled or swapped"),
    Reason("coordinates_swapped", "ingest",
           "the pair read as (lon, lat) fits the claimed country clearly better than as given",
           "swap `lat` and `lon` in the source"),
    Reason("coordinates_outside_country", "ingest",
           "the point is not in the claimed country (beyond `geo.border_tolerance_km` of its border), or is far at "
           "sea (`geo.max_offshore_km`, `geo.max_distance_km`)", "fix the coordinates or the country"),
    Reason("unknown_country", "ingest",
           "the country code is not ISO 3166 alpha-2, or has no region in `conf/regions.csv`",
           "use a two-letter code; add the country to the regions file if it belongs to a region"),
    Reason("duplicate", "ingest",
           "another row of this `video_id` wins: the latest `upload_time` wins, a tie goes to the later row of the "
           "manifest (the detail says which); the replaced `uploads` row is quarantined too",
           "nothing: this is the record of what was replaced"),
    Reason("withdrawn", "ingest", "the `uploads` row of a video its uploader withdrew (a tombstone replaced it)",
           "nothing: this is the record of what was withdrawn"),
    Reason("shared_uri", "ingest",
           "the `uri` is already the uri of another `video_id` (only with `ingest.shared_uri: quarantine`; the "
           "default `warn` counts such rows and keeps them)",
           "drop the duplicate row, or give each video its own file"),
    # ---- import: cxatlas/stages/import_annotations.py
    Reason("missing_video_id", "import", "`video_id` is null or blank", "fix the row in your file and import it again"),
    Reason("unknown_region", "import", "`region` is neither one of the 12 region ids nor a paper display name",
           "fix the row in your file and import it again"),
    Reason("invalid_coordinates", "import", "`lat`/`lon` not both null or both finite within ±90/±180",
           "fix the row in your file and import it again"),
    Reason("coordinates_outside_region", "import",
           "the point is not in the stated region (the geography rules of ingest)",
           "fix the coordinates or the region and import the row again"),
    Reason("invalid_expression_score", "import", "an `expr_` score is null, NaN or infinite",
           "fix the row in your file and import it again"),
    Reason("invalid_context_score", "import", "a `ctx_` score is null, NaN or outside [0, 1]",
           "fix the row in your file and import it again"),
    Reason("duplicate_video_id", "import", "the `video_id` occurs more than once in the input (every copy is "
           "quarantined: the file does not say which is right)", "keep one row per video and import it again"),
    Reason("region_conflict", "import", "`uploads` holds the video under another region",
           "correct the region (in your file or in the manifest) and import it again"),
    # ---- annotate: udfs/annotate.py (the URI policy again, decoding via cxatlas/media/video.py, faces, models)
    Reason("missing_uri", "annotate", "the `uploads` row has no `uri`", _URI_ANNOTATE),
    Reason("uri_scheme_refused", "annotate", "the uri's scheme is not in `ingest.allowed_schemes`", _URI_ANNOTATE),
    Reason("uri_not_absolute", "annotate", "a local path that is not absolute", _URI_ANNOTATE),
    Reason("uri_system_path", "annotate",
           "the path, after following symbolic links, is under /proc, /sys or /dev", _URI_ANNOTATE),
    Reason("uri_outside_roots", "annotate",
           "the path, after following symbolic links, is not under any of `ingest.allowed_roots`", _URI_ANNOTATE),
    Reason("missing_file", "annotate", "the path or URI does not exist",
           "restore the file (or re-ingest the row with its new `uri`); missing files are retried on every run "
           "(`annotate.retry_reasons`)"),
    Reason("unreadable", "annotate", "the file exists but cannot be read (permissions, a storage error)",
           "fix permissions or storage, then `--set annotate.retry_quarantined=true`"),
    Reason("not_a_regular_file", "annotate",
           "a directory, device, FIFO, socket or pseudo-file: never opened as a stream", _REINGEST),
    Reason("empty_video", "annotate", "zero-length file, or a video stream that yields no decodable frame", _REINGEST),
    Reason("not_a_video", "annotate",
           "the bytes are not a media container FFmpeg can read (text, image, random bytes)", _REINGEST),
    Reason("no_video_stream", "annotate", "a valid media file without a video stream (audio only, or cover art)",
           _REINGEST),
    Reason("corrupt_video", "annotate",
           "a recognised video container that cannot be parsed or decoded (truncated, damaged)", _REINGEST),
    Reason("unsupported_codec", "annotate", "the video stream's codec has no decoder in this FFmpeg build",
           "re-encode the video (H.264 decodes everywhere) and re-ingest it, or leave it quarantined"),
    Reason("too_few_frames", "annotate", "no window reaches `annotate.video.min_frames`",
           "leave it quarantined (too short to score), or lower the setting"),
    Reason("decode_error", "annotate", "an unexpected fault while decoding this one video (the batch goes on)",
           _RETRY),
    Reason("face_detection_error", "annotate", "a fault of face detection or tracking on this one video", _RETRY),
    Reason("model_error", "annotate", "the expression model failed on this video (a failing batch is scored again "
           "one video at a time, so only the culprit is quarantined)", _RETRY),
    Reason("context_model_error", "annotate", "the context model failed on this video (a failing batch is scored "
           "again one video at a time, so only the culprit is quarantined)", _RETRY),
    # ---- train: cxatlas/stages/train.py (rating rows), udfs/training.py (stimuli)
    Reason("missing_uri", "train", "a rating row without `uri`", "fill in the stimulus' location and train again"),
    Reason("missing_country", "train", "a rating row without `country`",
           "fill in the rater country and train again"),
    Reason("non_finite_rating", "train", "a rating is NaN or infinite (the detail names the labels; a null is a "
           "rating not given)", "fix or drop the rating and train again"),
    Reason("missing_file", "train", "the stimulus file does not exist", "restore the file or fix its `uri`"),
    Reason("unreadable", "train", "neither an image nor a readable video, or it cannot be read",
           "replace the file or fix permissions"),
    Reason("no_face", "train", "MTCNN found no face above `annotate.faces.min_prob`",
           "nothing, or use a tighter crop of the face; the stimulus trains nothing"),
    Reason("face_detection_error", "train", "a fault of face detection on this stimulus",
           "report it (the detail holds the error)"),
)


def reasons(stage: str | None = None) -> list[Reason]:
    """The catalogue, or one stage's part of it, in catalogue order."""
    if stage is not None and stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; expected one of {', '.join(STAGES)}")
    return [r for r in CATALOGUE if stage is None or r.stage == stage]


def lookup(stage: str, code: str) -> Reason | None:
    """The entry of ``code`` written by ``stage``, or None."""
    return next((r for r in CATALOGUE if r.stage == stage and r.code == code), None)


def markdown_table(stage: str) -> str:
    """One stage's reasons as the README's Markdown table."""
    rows = ["| reason | what it means | what you do |", "| --- | --- | --- |"]
    rows += [f"| `{r.code}` | {r.meaning} | {r.action} |" for r in reasons(stage)]
    return "\n".join(rows)


def _markers(stage: str) -> tuple[str, str]:
    return f"<!-- reasons:{stage} (generated: cxatlas reasons --update-readme README.md) -->", \
        f"<!-- /reasons:{stage} -->"


def render_readme(text: str) -> str:
    """``text`` (the README) with every stage's table rewritten between its markers; raises ValueError when a
    stage's markers are missing, so a stage cannot silently drop out of the README."""
    for stage in STAGES:
        begin, end = _markers(stage)
        pattern = re.compile(re.escape(begin) + r"\n.*?" + re.escape(end), re.S)
        if not pattern.search(text):
            raise ValueError(f"README lacks the markers of stage {stage!r}: {begin} ... {end}")
        text = pattern.sub(lambda _m, s=stage, b=begin, e=end: f"{b}\n{markdown_table(s)}\n{e}", text, count=1)
    return text
