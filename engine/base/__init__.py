"""Plumbing under everything else: the user-facing error (errors), safe file writes and reads
(files), the resource limits (limits), device choice and GPU memory (devices), seeded random
draws (seeding), measured batch sizes (batching), image metrics (metrics), video files
(video) and audio features (audio). Imports nothing from the layers above."""
