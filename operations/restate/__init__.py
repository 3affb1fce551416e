"""The Restate operator routes: the Restate doctor and the three recovery writes (the admin client is ``cases``')."""
