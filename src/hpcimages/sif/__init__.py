"""Stage 3, sif: Apptainer runtimes, conversion of built images to .sif files, and the tools image."""
