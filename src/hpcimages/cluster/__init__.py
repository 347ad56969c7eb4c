"""Stage 5, cluster: Slurm batch scripts for site profiles, job records, collection, and the test cluster."""
