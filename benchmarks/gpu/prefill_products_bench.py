# cuBLAS products at a prefill's shapes, SDPA and two elementwise steps, against an 8192^3 bf16 product, for the
# prefill calibration of planner/cost_model.h (kPrefillMatmulEfficiency, kAttentionEfficiency). PyTorch, one GPU:
#   python3 benchmarks/gpu/prefill_products_bench.py
# Prints: the 8192^3 rate (TFLOP/s); per model shape (l3: Llama-3-8B, l2: Llama-2-7B) and M tokens, the TFLOP/s of
# the q/k/v, o (+ residual, addmm), gate/up and down (+ residual) products, each timed alone (20 after 3 warm-ups),
# and of the four together; "stack": 32 layers' products back to back (F.linear), nine passes in a row; SDPA
# (causal, 32 query heads over 8 KV heads of 128, keys and values a view of a 1024-position cache) at 1 and 8 rows
# of 512 tokens, the attention output's transpose copy and LibTorch's SiLU x up. Small ops at one row are bound by
# Python's dispatch here (each timed op is launched from Python), so their times are upper bounds.
# Results: benchmarks/results/h200-2026-11-27-prefill/.
import torch,torch.nn.functional as F
d='cuda';bf=torch.bfloat16;E=torch.cuda.Event
def tm(f,n=20,w=3):
 for _ in range(w):f()
 a=E(enable_timing=True);b=E(enable_timing=True);torch.cuda.synchronize();a.record()
 for _ in range(n):f()
 b.record();torch.cuda.synchronize();return a.elapsed_time(b)/n*1e3
print(torch.cuda.get_device_name())
x=torch.randn(8192,8192,device=d,dtype=bf);y=torch.randn(8192,8192,device=d,dtype=bf)
print('gemm8192 %.0f'%(2*8192**3/tm(lambda:x@y,10)/1e6))
S={'l3':[(6144,4096),(4096,4096),(28672,4096),(4096,14336)],'l2':[(12288,4096),(4096,4096),(22016,4096),(4096,11008)]}
for nm,sh in S.items():
 W=[torch.randn(n,k,device=d,dtype=bf)*.02 for n,k in sh]
 for M in(512,1024,2048,4096):
  X=[torch.randn(M,k,device=d,dtype=bf) for n,k in sh];R=torch.randn(M,4096,device=d,dtype=bf)
  out=[];tot=0;fl=0
  for i,(w,xx) in enumerate(zip(W,X)):
   f=(lambda w=w,xx=xx:torch.addmm(R,xx,w.t())) if i in(1,3) else (lambda w=w,xx=xx:F.linear(xx,w))
   t=tm(f);n,k=sh[i];out.append('%.0f'%(2*M*n*k/t/1e6));tot+=t;fl+=2*M*n*k
  print(nm,M,' '.join(out),'layer %.0f'%(fl/tot/1e6))
W=[torch.randn(n,k,device=d,dtype=bf)*.02 for n,k in S['l3']]
for M in(512,4096):
 X=[torch.randn(M,k,device=d,dtype=bf) for n,k in S['l3']];fl=32*sum(2*M*n*k for n,k in S['l3'])
 def stk():
  for _ in range(32):
   for w,xx in zip(W,X):F.linear(xx,w)
 ts=[tm(stk,1,0) for _ in range(1)];ts+=[tm(stk,1,0) for _ in range(8)]
 print('stack',M,' '.join('%.0f'%(fl/t/1e6) for t in ts))
for B in(1,8):
 q=torch.randn(B,32,512,128,device=d,dtype=bf);kc=torch.randn(B,8,1024,128,device=d,dtype=bf);vc=torch.randn_like(kc)
 k=kc.narrow(2,0,512);v=vc.narrow(2,0,512);fl=4*4096*B*512*513/2
 t=tm(lambda:F.scaled_dot_product_attention(q,k,v,is_causal=True,enable_gqa=True))
 a=F.scaled_dot_product_attention(q,k,v,is_causal=True,enable_gqa=True)
 t2=tm(lambda:a.transpose(1,2).reshape(B,512,4096))
 print('sdpa B%d %.1f us %.0f TFLOP/s; transpose copy %.1f us'%(B,t,fl/t/1e6,t2))
 g=torch.randn(B*512,28672,device=d,dtype=bf)
 t3=tm(lambda:F.silu(g[:,:14336])*g[:,14336:]);print('silu*up B%d %.1f us %.0f GB/s'%(B,t3,B*512*14336*6/t3/1e3))
