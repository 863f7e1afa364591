"""Which input URIs cxatlas reads: the policy applied to every manifest ``uri`` at ingest and again before decoding.

Why: manifests come from upload systems the operator does not control, and every ``uri`` in one is opened by a
worker with the job's own rights. Without a policy, ``/etc/shadow``, ``/proc/self/environ``, ``/dev/zero`` or a cloud
metadata address (``http://169.254.169.254/...``) are "uploads" like any other. The policy is pure Python (no Spark,
no I/O) so ingest can apply it to every row on the executors and annotate again to each video just before opening it.

* **Schemes** (``ingest.allowed_schemes``): local files (``file``, also for plain absolute paths) and the object stores
  Spark reads; ``http``/``https`` only when listed explicitly.
* **Roots** (``ingest.allowed_roots``): empty means anywhere (local or in an allowed store); on a shared machine list
  the folders and buckets uploads live in. A root is matched on whole path segments after ``..`` is resolved.
* A local path must be absolute (a relative one would be resolved against whichever worker's directory) and never
  under a pseudo-filesystem (``/proc``, ``/sys``, ``/dev``), whatever the roots say.
"""
from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass

#: Quarantine reasons of the policy, with what each means (README "Bad input" lists them too).
REASONS: dict[str, str] = {
    "missing_uri": "the row has no uri (null or blank)",
    "uri_scheme_refused": "the uri's scheme is not in ingest.allowed_schemes (http(s) is refused unless listed)",
    "uri_not_absolute": "a local path that is not absolute (it would be resolved against a worker's directory)",
    "uri_system_path": "a path under /proc, /sys or /dev: pseudo-files and devices, never uploads",
    "uri_outside_roots": "the uri is not under any of ingest.allowed_roots",
}
SYSTEM_ROOTS = ("/proc", "/sys", "/dev")
LOCAL_SCHEMES = ("file",)
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")
# A plain absolute local path that :meth:`UriPolicy.refusal` would take apart and put back unchanged: nothing around it
# to strip, no scheme (it starts with "/"), no authority and nothing normalisation changes but a trailing slash (no
# "//", no segment starting with "."), only ASCII letters, digits and -_.~+%=,@ (so no Unicode case or whitespace
# rules), and not a system root or under one. Such a uri is refused only by a policy without "file" or with roots;
# every other uri goes through refusal() itself.
_PLAIN_LOCAL = re.compile(r"/(?!(?:%s)(?:/|\Z))(?!.*//)(?!.*/\.)[A-Za-z0-9_.~+%%=,@/-]*\Z"
                          % "|".join(re.escape(root.strip("/")) for root in SYSTEM_ROOTS))


def scheme_of(uri: str) -> str:
    """The lower-case scheme of ``uri``; ``file`` for a plain path."""
    match = _SCHEME.match(uri)
    return match.group(1).lower() if match else "file"


def _split(uri: str) -> tuple[str, str, str]:
    """(scheme, authority, normalised absolute path) of ``uri``; a relative local path keeps no leading slash."""
    scheme = scheme_of(uri)
    rest = uri[len(scheme) + 1:] if _SCHEME.match(uri) else uri
    authority = ""
    if rest.startswith("//"):
        authority, _, rest = rest[2:].partition("/")
        rest = "/" + rest
    if not rest.startswith("/"):
        return scheme, authority, rest
    return scheme, authority.lower(), posixpath.normpath(rest).replace("//", "/")


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


@dataclass(frozen=True)
class UriPolicy:
    """Allowed schemes and roots (see the module docstring); :meth:`refusal` says why a uri is refused, or None."""

    allowed_schemes: tuple[str, ...]
    allowed_roots: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, ingest) -> "UriPolicy":
        """The policy of ``cfg.settings.ingest`` (``allowed_schemes``, ``allowed_roots``)."""
        return cls(tuple(ingest.allowed_schemes), tuple(ingest.allowed_roots))

    def refusal(self, uri: str | None, *, resolve_links: bool = False) -> tuple[str, str] | None:
        """(reason, detail) when ``uri`` may not be read, else None. ``resolve_links``: also follow symbolic links
        of a local path (annotate, on the machine that opens the file) before the root checks."""
        if uri is None or not str(uri).strip():
            return "missing_uri", "the row has no uri"
        uri = str(uri).strip()
        scheme, authority, path = _split(uri)
        allowed = {s.lower() for s in self.allowed_schemes}
        if scheme not in allowed:
            return ("uri_scheme_refused", f"uri {uri[:300]!r}: scheme {scheme!r} is not in ingest.allowed_schemes "
                    f"({', '.join(sorted(allowed)) or 'none'})")
        local = scheme in LOCAL_SCHEMES
        if local and not path.startswith("/"):
            return "uri_not_absolute", f"uri {uri[:300]!r} is a relative path: give an absolute path or a URI"
        if local and resolve_links:
            path = os.path.realpath(path)
        if local and any(_under(path, root) for root in SYSTEM_ROOTS):
            return "uri_system_path", f"uri {uri[:300]!r} is under {', '.join(SYSTEM_ROOTS)} (pseudo-files, devices)"
        if self.allowed_roots and not any(self._within(scheme, authority, path, root) for root in self.allowed_roots):
            return ("uri_outside_roots", f"uri {uri[:300]!r} is not under any of ingest.allowed_roots "
                    f"({', '.join(self.allowed_roots)})")
        return None

    def refusals(self, uris) -> list[tuple[str, str] | None]:
        """:meth:`refusal` of every uri of a batch (a sequence; None or NaN: missing), in order.

        Ingest asks this for every manifest row, so the common uri, a plain absolute local path (``_PLAIN_LOCAL``), is
        answered by one regular-expression match when the policy allows local files anywhere; every other uri gets
        :meth:`refusal` itself, so the answers are the same as asking row by row (``tests/core/test_uri_policy.py``).
        """
        plain = _PLAIN_LOCAL.match if "file" in {s.lower() for s in self.allowed_schemes} and not self.allowed_roots \
            else None
        out: list[tuple[str, str] | None] = []
        for uri in uris:
            if plain is not None and type(uri) is str and plain(uri):
                out.append(None)
            else:
                out.append(self.refusal(None if uri is None or (isinstance(uri, float) and uri != uri) else uri))
        return out

    @staticmethod
    def _within(scheme: str, authority: str, path: str, root: str) -> bool:
        r_scheme, r_authority, r_path = _split(root)
        if r_scheme != scheme or (scheme not in LOCAL_SCHEMES and r_authority != authority):
            return False
        return _under(path, r_path if r_path.startswith("/") else "/" + r_path)
