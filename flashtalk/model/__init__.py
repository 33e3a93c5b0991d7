"""Networks (renderer, audio encoder, motion generator) as nn.Modules, and their checkpoint loaders."""
