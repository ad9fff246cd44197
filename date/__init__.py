"""DATE: Dual Assignment for End-to-End Fully Convolutional Object Detection."""
