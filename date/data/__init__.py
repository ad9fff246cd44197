"""Data: the synthetic benchmark (synthetic), COCO-format datasets (coco), CrowdHuman's odgt layout (odgt, crowdhuman),
detection transforms (transforms), loaders (loader), the data cache's place (cache_dir), and the ``dataset`` config
node -> validated datasets (build)."""
