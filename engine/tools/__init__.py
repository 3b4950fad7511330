"""What the studio does with a generator: network bending (bending), feature clusters
(clusters), latents, directions and walks (latents), projection of photos (projector),
the image-to-latent translator (translator), its anchors (anchors) and their fit to a
picture (translate_match), blended generators
(blend), attribute boundaries (boundaries) and the model verbs of the command line
(cli_models). Imports only the layers below."""
