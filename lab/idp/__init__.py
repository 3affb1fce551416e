"""The lab identity provider (app label ``idp``): allauth's OpenID Connect server with Entra-style claims, run as
its own process under ``lab.idp.settings`` (``process``), and driven from the lab and the tests (``driver``)."""
