"""File I/O beside the model layer: speech decode (`audio`), video / image encode and decode (`media`), the
portrait's face crop (`facecrop`) and the driving-video decode (`driving`).

Nothing is imported here, so `import flashtalk` stays lean; these modules import only `errors`, `constants`,
`faces` and model-level code, never the runtime.
"""
