"""Used by every layer: request value checks and `RequestError` (`request_checks`),
`config.pbtxt` parameters (`params`) and crash-safe file writes (`atomic_files`)."""
