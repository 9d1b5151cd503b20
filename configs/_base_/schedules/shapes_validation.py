# Validation during training on the embedded benchmark (alter.engine.validation): from
# iteration val_begin on, every val_interval iterations and at the end, 32 Shapes-T2I val
# prompts generated as the `shapes` evaluation protocol samples them (DDIM, 20 steps,
# guidance 3), scored by attribute accuracy and the alignment score; logged beside the
# losses in vis_data/scalars.json. About 15 s per validation on one CPU core (~6 iterations
# of batch-16 training); runs shorter than val_begin (tests, the demo's 400 iterations)
# never validate. Off: --cfg-options val_cfg=None val_dataloader=None val_evaluator=None
train_cfg = dict(val_begin=500, val_interval=500)
val_cfg = dict(type='GenerationValLoop', num_steps=20, guidance_scale=3.0, scheduler='ddim')
val_dataloader = dict(
    batch_size=32,
    num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='alter.prompt_collate'),
    dataset=dict(type='GenerationPrompts', prompts='shapes', num_prompts=32, seed=0))
val_evaluator = [dict(type='AttributeAccuracy'), dict(type='AlignmentScore')]
