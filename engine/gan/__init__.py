"""The generator networks and their files: the StyleGAN2 and StyleGAN3 networks (stylegan2,
stylegan3) and their fused operations (ops), the per-family registry and model identity
(networks), and reading and writing checkpoints in every supported format (checkpoints).
Imports only engine.base."""
