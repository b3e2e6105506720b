from perfsamples import read_samples
import sys, collections
path, pat = sys.argv[1], sys.argv[2]
samples = read_samples(path)
N=len(samples); cnt=collections.Counter(); tot=0
skip=('mi_','_mi_','__rust','alloc::','core::ptr','__memmove','__memset','asm_','exc_','handle_mm','do_user','do_anon','clear_page','__handle','do_page','[unknown]','RawVec','<alloc::','memcpy','madvise','__madvise','syscall','entry_SYSCALL','do_syscall','__x64','bytes::','<bytes','hashbrown','core::','<core::','std::','drop_in_place','free','realloc','malloc','_int_','sysmalloc')
for s in samples:
    if not any(pat in f for f in s): continue
    tot+=1
    u=next((f for f in s if not any(f.startswith(k) or k in f[:20] for k in skip)), '?')
    cnt[u[:140]]+=1
print(f"{pat}: {100*tot/N:.2f}%")
for k,v in cnt.most_common(20): print(f"{100*v/N:6.2f}%  {k}")
