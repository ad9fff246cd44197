"""Data: the synthetic benchmark (synthetic), COCO-format datasets (coco), detection transforms
(transforms), loaders (loader), and the ``dataset`` config node -> validated datasets (build)."""
