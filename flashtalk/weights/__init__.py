"""Weights: the checkpoint toolkit (`checkpoint`, `validate`), the loaders of each family (`liveportrait`,
`hubert`, `joyvasa`), seeded weights for tests (`seeded`), the one-file bundle (`bundle`), the published files
on the Hugging Face Hub (`hub`) and the named model sizes (`presets`)."""
