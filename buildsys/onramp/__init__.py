"""The on-ramp: recipes made from what a project already has (a Dockerfile: ``dockerfile``, ``translate``)."""
