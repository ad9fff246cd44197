"""The network: backbone + FPN (backbone), the shared head (head), the detector and its inference
(detector), and the builders from the config (build)."""
