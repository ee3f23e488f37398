# %% [markdown]
# # 5. Learning from human feedback: reward models, PPO, best-of-n, DPO and GRPO
#
# (skeleton: being written)

# %% [markdown]
# ## Settings

# %% [markdown]
# ## The setting: a policy, a gold reward and labelers

# %% [markdown]
# ## A reward model from preferences

# %% [markdown]
# ## Best-of-n sampling

# %% [markdown]
# ## PPO from scratch

# %% [markdown]
# ## The clipped objective

# %% [markdown]
# ## The KL leash

# %% [markdown]
# ## Over-optimisation

# %% [markdown]
# ## DPO: preferences without a reward model

# %% [markdown]
# ## GRPO: a verifiable reward and no value head

# %% [markdown]
# ## All the methods on one chart

# %% [markdown]
# ## What InstructGPT did

# %% [markdown]
# ## Common misconceptions

# %% [markdown]
# ## Summary

# %% [markdown]
# ## Exercises

# %% [markdown]
# ## Key terms

# %% [markdown]
# ## References
