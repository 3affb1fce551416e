"""The static-files storage: whitenoise's compressed manifest storage, forgiving before ``collectstatic``.

After ``collectstatic`` (``scripts/setup`` runs it) templates link hashed names
(``base.3f2a….css``) that whitenoise serves compressed with a far-future
``Cache-Control``. Before it -- a fresh checkout, a test run, a file added
since the last collection -- a name missing from the manifest is linked under
its plain name, which whitenoise serves from the app's own directory
(``WHITENOISE_USE_FINDERS``), so the console is styled either way instead of
failing with Django's "Missing staticfiles manifest entry".
"""

from __future__ import annotations

from whitenoise.storage import CompressedManifestStaticFilesStorage


class CollectedOrFoundStorage(CompressedManifestStaticFilesStorage):
    manifest_strict = False

    def stored_name(self, name: str) -> str:
        if not self.hashed_files:
            return name
        try:
            return super().stored_name(name)
        except ValueError:  # not collected (yet): the finders serve it under its own name
            return name
