CORRECT = "DenseGeneral projections, then Flax's functional nn.dot_product_attention with a causal mask and its own weight dropout"

import flax.linen as nn


class EinsumMultiHeadAttention(nn.Module):
    num_heads: int
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x, deterministic=True):
        C = x.shape[-1]
        head_dim = C // self.num_heads
        q, k, v = (nn.DenseGeneral(features=(self.num_heads, head_dim), name=n)(x) for n in ("query", "key", "value"))
        training = not deterministic and self.dropout_rate > 0
        out = nn.dot_product_attention(q, k, v, mask=nn.make_causal_mask(x[:, :, 0]), dropout_rate=self.dropout_rate,
                                       dropout_rng=self.make_rng("dropout") if training else None,
                                       deterministic=deterministic)  # (B, T, H, D)
        return nn.DenseGeneral(features=C, axis=(-2, -1), name="out")(out)
