"""Stage 6, publish: the project registry, `invoke publish` (checked images only, proven digests) and the image
catalogue."""
