"""verl's PPO/GRPO side: the token-weighted policy losses, the actor harness, the PPO entry, and the CPU rollout
(``hf_rollout``) with the copy3 GRPO runs that use it."""
