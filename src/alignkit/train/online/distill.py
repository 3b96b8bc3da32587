"""On-policy distillation (GKD; Agarwal et al. 2024) as a method of the one loop: the student samples (the rollout
stage, environments included), the teacher scores every position of the student's own samples, and the student
minimizes the generalized JSD (``losses.generalized_jsd_loss``; default reverse KL) between its next-token
distribution and the teacher's there. Only on-policy data (GKD's lambda = 1): the student learns on the states it
visits itself, the point of the method.

Reward functions / a reward model, when configured, are measured on the samples (reward/mean, pass@1/...) and
never trained on. Observation tokens of multi-turn episodes are not distilled (the completion mask skips them).
"""

from __future__ import annotations

import torch

from alignkit.data import Sample
from alignkit.errors import UserError
from alignkit.logprobs import scored_distributions, unwrap_causal_lm
from alignkit.losses import generalized_jsd_loss
from alignkit.train.online.rollout import OnlineMethod


class DistillMethod(OnlineMethod):
    """``method.teacher`` distilled into the policy on the policy's samples."""

    name = "distill"

    def needs_reference(self) -> bool:
        return False

    def setup(self, model, train_items, eval_items, accelerator):
        from alignkit.models import load_model

        out = super().setup(model, train_items, eval_items, accelerator)
        self.teacher = load_model(self.mc.teacher, torch.float32, accelerator.device,
                                  self.cfg.model.trust_remote_code).requires_grad_(False).eval()  # fmt: skip
        student_vocab = unwrap_causal_lm(model).get_output_embeddings().weight.shape[0]
        teacher_vocab = unwrap_causal_lm(self.teacher).get_output_embeddings().weight.shape[0]
        if student_vocab != teacher_vocab:
            raise UserError(
                f"method.teacher {self.mc.teacher}: its vocabulary has {teacher_vocab} tokens, the student's "
                f"{student_vocab}. Fix: distill from a teacher with the student's tokenizer"
            )
        self.log(f"distillation: teacher {self.mc.teacher}, generalized JSD beta {self.mc.jsd_beta:g} "
                 "(1 = reverse KL) on the student's own samples")  # fmt: skip
        return out

    def shape_rewards(self, samples: list[Sample], rewards: list[float | None]) -> None:
        """Rewards are only measured: every sample is trained on, scored or not."""
        for s, r in zip(samples, rewards):
            s.reward = r

    def advantages(self, samples: list[Sample], n_prompts: int) -> None:
        for s in samples:
            s.advantages = [0.0]

    def loss(self, module, batch):
        """Per-completion losses ``(B,)``: the mean over the completion's (model) tokens of the generalized JSD
        between the student's and the teacher's next-token distributions."""
        mask, temperature = batch["completion_mask"], self.ro.temperature
        student = module(batch["input_ids"], batch["attention_mask"], mask, temperature=temperature,
                         distributions=True)  # (N, V)  # fmt: skip
        with torch.no_grad():
            teacher = scored_distributions(self.teacher, batch["input_ids"], batch["attention_mask"], mask, temperature)
        per_position = generalized_jsd_loss(student, teacher, self.mc.jsd_beta)  # (N,)
        scored = mask[:, 1:].bool()
        token_losses = torch.zeros(mask.shape, dtype=per_position.dtype, device=per_position.device)
        token_losses[:, 1:][scored] = per_position
        n = mask.sum(-1).clamp(min=1)
        losses = token_losses.sum(-1) / n
        labels = batch["input_ids"][:, 1:][scored][:, None]
        student_lp, teacher_lp = student.detach().gather(1, labels)[:, 0], teacher.gather(1, labels)[:, 0]
        metrics = {
            "loss/distill": losses.detach(),
            "distill/divergence": per_position.detach(),  # per token
            "distill/sampled_reverse_kl": student_lp - teacher_lp,  # the one-sample estimate on the sampled token
            "distill/teacher_logprob": teacher_lp,
            "distill/student_logprob": student_lp,
        }
        return losses, metrics
