"""Why a VMI runs emulated: the reasons, and the cluster or host facts they are drawn from."""
