"""Training: the resumable step loop shared by every trainer (loop), differentiable
augmentations with adaptive strength (augment), image datasets (datasets) of procedural
faces (faces) or pictures and the StyleGAN2 trainer (train_gan). Imports only the layers below."""
