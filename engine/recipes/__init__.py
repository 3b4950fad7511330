"""Recipes, the saved description of one image: the recipe and its renderer (recipe),
importers of other bending formats (bend_import), self-contained recipe bundles (bundle),
incremental re-rendering from the first changed layer (incremental), live controls bound to
recipe fields (mappings), music videos (music), recorded performances (performance) and
the `render` and `sweep` verbs (cli). The top layer."""
