"""Stage 2, images: base images, the wheel cache, the build, the checks inside each image, and their reports."""
