# Validation during training for SD2.1 configs (alter.engine.validation): CLIP score (spec §8:
# open_clip ViT-g-14, laion2b_s12b_b42k) of 32 prompts of a prompt file, generated as the
# paper's protocol samples them (PNDM, 20 steps, guidance 7.5) at the training resolution.
# Not in the shipped configs: it needs local CLIP weights and a prompt file. Enable it with
# a config of your own beside configs/alter/sd21_e4_s35.py:
#   _base_ = ['./sd21_e4_s35.py', '../_base_/schedules/sd21_validation.py']
#   train_cfg = dict(val_interval=2000)
#   val_dataloader = dict(dataset=dict(prompts='captions_val2014.json'))
#   val_evaluator = dict(weights='open_clip_vit-g-14_laion2b_s12b_b42k.safetensors')
# The first validation of an ALTER run also samples the dense teacher once (kept in memory).
val_cfg = dict(type='GenerationValLoop', num_steps=20, guidance_scale=7.5, scheduler='pndm')
val_dataloader = dict(
    batch_size=8,
    num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='alter.prompt_collate'),
    dataset=dict(type='GenerationPrompts', prompts=None, num_prompts=32, seed=0))
val_evaluator = dict(type='CLIPScore', weights=None, model_name='ViT-g-14',
                     pretrained_tag='laion2b_s12b_b42k')
