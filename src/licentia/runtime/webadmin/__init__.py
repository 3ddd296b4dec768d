"""WebAdmin: the runtime's administration pages, JSON API and metrics on its HTTP port
(served by `licentia.runtime.status`)."""
