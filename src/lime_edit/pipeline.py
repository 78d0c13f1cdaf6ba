"""LimePipeline: the task API (localize, edit, one call) on a diffusers IP2P pipeline.

CONTRACT (implementation in progress):

    lp = LimePipeline.from_pretrained(model, config=None, torch_dtype=None, device=None,
                                      allow_pickle=False, local_files_only=None)
    lp = LimePipeline(pipe, config=None)          # pipe: StableDiffusionInstructPix2PixPipeline

    loc  = lp.localize(image, instruction, seed=0, **overrides) -> Localization
    res  = lp.edit(image, instruction, mask="auto", seed=0, **overrides) -> EditResult
    res  = lp(image, instruction, ...)            # same as edit(mask="auto")

image: PIL.Image (any mode, converted to RGB), or a list of them.
instruction: str or list[str] (same length as the image list).
mask: "auto" (localize first, same seed), None (plain IP2P, no LIME),
      a Localization, or a user mask (PIL image / numpy array / torch tensor, any
      size, nonzero = edit), or a list of these (one per item).
seed: int (every item uses it) or list[int].
overrides: any LimeConfig field name, e.g. guidance_scale=7.5, num_clusters=4.
Lists in -> lists out; a batch of N equals N single calls with the same seeds.
"""
