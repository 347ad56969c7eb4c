"""hpcimages: build, verify, convert and publish HPC Python container base images."""

__version__ = "0.1.0"
