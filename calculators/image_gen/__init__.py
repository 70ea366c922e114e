"""Building blocks of ImageGenCalculator: options, requests, images, pipelines, streaming, LoRA."""
