"""Official-style ACmix (CVPR 2022), written from the spec attention.md, section 4.

The unfold formulation of the official `ResNet/test_bottleneck.py`: ReflectionPad2d + nn.Unfold
(no dilation) materialise the k_att^2 neighbourhood of k, v and the position encoding; the grid is
float32 from linspace. It therefore has the official limits: sizes > pad, even sizes for stride 2,
kernel_conv == 3 (padding 1 is hard-coded), dilation 1, fp32 only. Used as the equality reference in
tests and as the baseline in the speed/memory benchmark.
"""
import torch
import torch.nn as nn


def ref_position(h, w, device):
    """(1, 2, h, w) float32 grid: channel 0 = x in [-1, 1] along W, channel 1 = y along H."""
    xs = torch.linspace(-1.0, 1.0, w).view(1, w).expand(h, w)
    ys = torch.linspace(-1.0, 1.0, h).view(h, 1).expand(h, w)
    return torch.stack((xs, ys), 0).unsqueeze(0).to(device)


class RefACmix(nn.Module):
    def __init__(self, in_planes, out_planes, kernel_att=7, head=4, kernel_conv=3, stride=1, dilation=1):
        super().__init__()
        self.out_planes, self.head, self.stride = out_planes, head, stride
        self.kernel_att, self.kernel_conv = kernel_att, kernel_conv
        self.head_dim = out_planes // head
        self.rate1 = nn.Parameter(torch.full((1,), 0.5))
        self.rate2 = nn.Parameter(torch.full((1,), 0.5))
        self.conv1 = nn.Conv2d(in_planes, out_planes, 1)
        self.conv2 = nn.Conv2d(in_planes, out_planes, 1)
        self.conv3 = nn.Conv2d(in_planes, out_planes, 1)
        self.conv_p = nn.Conv2d(2, self.head_dim, 1)
        self.pad_att = nn.ReflectionPad2d((dilation * (kernel_att - 1) + 1) // 2)
        self.unfold = nn.Unfold(kernel_size=kernel_att, padding=0, stride=stride)
        self.softmax = nn.Softmax(dim=1)
        self.fc = nn.Conv2d(3 * head, kernel_conv ** 2, 1, bias=False)
        self.dep_conv = nn.Conv2d(kernel_conv ** 2 * self.head_dim, out_planes, kernel_conv, stride=stride,
                                  padding=1, groups=self.head_dim, bias=True)
        # Official quirk: the shift kernel replaces the weight and the bias ends up None.
        shift = torch.zeros(kernel_conv ** 2, kernel_conv, kernel_conv)
        for i in range(kernel_conv ** 2):
            shift[i, i // kernel_conv, i % kernel_conv] = 1.0
        self.dep_conv.weight = nn.Parameter(shift.repeat(out_planes, 1, 1, 1))
        self.dep_conv.bias = None

    def forward(self, x):
        q, k, v = self.conv1(x), self.conv2(x), self.conv3(x)
        b, _, h, w = q.shape
        s, hd, ka2 = self.stride, self.head_dim, self.kernel_att ** 2
        ho, wo = h // s, w // s
        pe = self.conv_p(ref_position(h, w, x.device))
        q_att = q.view(b * self.head, hd, h, w) * hd ** -0.5
        k_att = k.view(b * self.head, hd, h, w)
        v_att = v.view(b * self.head, hd, h, w)
        q_pe = pe
        if s > 1:
            q_att, q_pe = q_att[:, :, ::s, ::s], pe[:, :, ::s, ::s]
        k_unf = self.unfold(self.pad_att(k_att)).view(b * self.head, hd, ka2, ho, wo)
        pe_unf = self.unfold(self.pad_att(pe)).view(1, hd, ka2, ho, wo)
        logits = (q_att.unsqueeze(2) * (k_unf + q_pe.unsqueeze(2) - pe_unf)).sum(1)
        attn = self.softmax(logits)
        v_unf = self.unfold(self.pad_att(v_att)).view(b * self.head, hd, ka2, ho, wo)
        out_att = (attn.unsqueeze(1) * v_unf).sum(2).view(b, self.out_planes, ho, wo)

        heads = [t.view(b, self.head, hd, h * w) for t in (q, k, v)]
        f_all = self.fc(torch.cat(heads, 1))  # (b, kc^2, hd, hw)
        f_conv = f_all.permute(0, 2, 1, 3).reshape(b, -1, h, w)
        out_conv = self.dep_conv(f_conv)
        return self.rate1 * out_att + self.rate2 * out_conv
