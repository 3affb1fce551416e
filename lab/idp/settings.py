"""The lab identity provider: django-allauth's own OpenID Connect provider (``allauth.idp.oidc``), run as a
second settings module of this project on its own loopback port, with its own database.

    export DJANGO_SETTINGS_MODULE=lab.idp.settings
    python manage.py migrate
    python manage.py idp_seed --redirect-uri http://127.0.0.1:8000/accounts/oidc/lab-idp/login/callback/ \\
        --client-secret "$REVIVE_LAB_IDP_CLIENT_SECRET"
    python manage.py runserver 127.0.0.1:8765

It issues ID tokens carrying Entra's ``tid`` and ``oid`` (``lab.idp.adapter``), rotates refresh tokens on use, and
answers ``invalid_grant`` for a refresh token that was rotated away or revoked at ``/identity/o/api/revoke``.
See docs/reconnect.md. The environment is read here and nowhere else for this process.
"""

from __future__ import annotations

import secrets
import sys
from pathlib import Path

import environ

BASE_DIR = Path(__file__).resolve().parents[2]
env = environ.Env()
VAR_DIR = Path(env.str("REVIVE_VAR_DIR", default=str(BASE_DIR / "var")))
VAR_DIR.mkdir(parents=True, exist_ok=True)


def _local_file(name: str, make) -> str:
    """Read, or create once, a local secret of the lab provider under var/."""
    path = VAR_DIR / name
    if not path.exists():
        path.write_text(make())
        path.chmod(0o600)
        print(f"revive idp: generated {path}", file=sys.stderr)
    return path.read_text()


def _private_key_pem() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


DEBUG = env.bool("REVIVE_IDP_DEBUG", default=False)
SECRET_KEY = (
    env.str("REVIVE_IDP_SECRET_KEY", default="")
    or _local_file("idp_secret_key", lambda: secrets.token_urlsafe(50)).strip()
)
ALLOWED_HOSTS = env.list("REVIVE_IDP_ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]"])

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "allauth",
    "allauth.account",
    "allauth.idp.oidc",
    "lab.idp",  # only the provider: the recovery lab itself (``lab``) is Revive's, not installed here
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "allauth.account.middleware.AccountMiddleware",
    "lab.idp.middleware.ClaimsRequestMiddleware",
    "lab.idp.middleware.SelectAccountMiddleware",
]
ROOT_URLCONF = "lab.idp.urls"
WSGI_APPLICATION = None
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]
DATABASES = {"default": env.db("REVIVE_IDP_DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'idp.sqlite3'}")}
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):  # parallel token requests wait for the write lock
    DATABASES["default"].setdefault("OPTIONS", {}).update({"timeout": 20, "transaction_mode": "IMMEDIATE"})
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"
STATIC_URL = "static/"

# Cookies do not care about ports: on 127.0.0.1 the provider's must not collide with Revive's.
SESSION_COOKIE_NAME = "revive_idp_sessionid"
CSRF_COOKIE_NAME = "revive_idp_csrftoken"
LOGIN_URL = "account_login"
LOGIN_REDIRECT_URL = "/"

ACCOUNT_ADAPTER = "lab.idp.adapter.LabAccountAdapter"
ACCOUNT_LOGIN_METHODS = {"username"}
ACCOUNT_SIGNUP_FIELDS = ["username*", "password1*", "password2*"]
ACCOUNT_EMAIL_VERIFICATION = "none"
ACCOUNT_RATE_LIMITS = False
if env.bool("REVIVE_IDP_FAST_PASSWORDS", default=False):  # tests: a cheap hasher for the seeded passwords
    PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

IDP_OIDC_PRIVATE_KEY = env.str("REVIVE_IDP_PRIVATE_KEY", default="") or _local_file(
    "idp_private_key.pem", _private_key_pem
)
IDP_OIDC_ADAPTER = "lab.idp.adapter.LabOIDCAdapter"
IDP_OIDC_ROTATE_REFRESH_TOKEN = True
IDP_OIDC_ACCESS_TOKEN_EXPIRES_IN = env.int("REVIVE_IDP_ACCESS_TOKEN_EXPIRES_IN", default=3600)
IDP_OIDC_REFRESH_TOKEN_EXPIRES_IN = env.int("REVIVE_IDP_REFRESH_TOKEN_EXPIRES_IN", default=90 * 24 * 3600)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "filters": {"redact_credentials": {"()": "reauth.logging.RedactCredentialsFilter"}},
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "plain", "filters": ["redact_credentials"]}
    },
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {"django.server": {"handlers": ["console"], "level": "INFO", "propagate": False}},
}
