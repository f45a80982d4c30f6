CORRECT = "uses Flax's nn.dot_product_attention with nn.make_causal_mask and its dropout"

import flax.linen as nn


class Head(nn.Module):
    head_size: int
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x, deterministic=True):
        B, T, _ = x.shape
        q = nn.Dense(self.head_size, use_bias=False, name="query")(x)[:, :, None, :]
        k = nn.Dense(self.head_size, use_bias=False, name="key")(x)[:, :, None, :]
        v = nn.Dense(self.head_size, use_bias=False, name="value")(x)[:, :, None, :]
        mask = nn.make_causal_mask(x[..., 0])
        rng = None if deterministic or self.dropout_rate == 0 else self.make_rng("dropout")
        out = nn.dot_product_attention(q, k, v, mask=mask, dropout_rng=rng, dropout_rate=self.dropout_rate,
                                       deterministic=deterministic)
        return out[:, :, 0, :]
