"""Training: the resumable step loop shared by every trainer (loop), differentiable
augmentations with adaptive strength (augment), image datasets and procedural faces
(datasets) and the StyleGAN2 trainer (train_gan). Imports only the layers below."""
