"""Plumbing under everything else: the user-facing error (errors), safe file writes and reads
(files), the resource limits (limits), device choice and GPU memory (devices), seeded random
draws (seeding), measured batch sizes (batching), image metrics (metrics), video files
(video), audio features (audio), the generator's pictures as uint8 (images) and guarded
YAML reading (safe_yaml). Imports nothing from the layers above."""
