# git under the shim: a repository made, committed to, packed (two delta-search threads),
# checked and searched (two grep threads), with fixed names, dates and no system or user
# configuration, so that every commit id is the same on every run.
# Usage: bash git.sh WORKDIR (HOME is WORKDIR)
set -euo pipefail
cd "$1"
export GIT_CONFIG_NOSYSTEM=1 GIT_AUTHOR_NAME=Corpus GIT_AUTHOR_EMAIL=corpus@example.org \
  GIT_COMMITTER_NAME=Corpus GIT_COMMITTER_EMAIL=corpus@example.org \
  GIT_AUTHOR_DATE='2024-01-01T00:00:00Z' GIT_COMMITTER_DATE='2024-01-01T00:00:00Z'
git -c init.defaultBranch=main init -q repo
cd repo
git symbolic-ref HEAD refs/heads/main
for i in $(seq 1 40); do seq "$i" 3 $((i * 300)) > "file$i.txt"; done
git add .
git commit -q -m "first: forty files"
for i in $(seq 1 40 | sed -n '1~3p'); do seq $((i * 7)) 5 $((i * 400)) >> "file$i.txt"; done
git rm -q file2.txt
git commit -q -a -m "second: grow some, remove one"
git log --shortstat --format='%H %an <%ae> %ad %s' --date=iso-strict
git -c pack.threads=2 gc -q --aggressive
git count-objects -v | grep -E '^(count|in-pack|packs|garbage):'
git fsck --no-progress --strict
git grep --threads=2 -c -E '^(1234|4321)$'
git log -p --format=%H | sha256sum
git archive --format=tar HEAD | sha256sum
git diff --stat HEAD~1 HEAD | tail -n 1
git rev-parse HEAD HEAD~1 'HEAD^{tree}'
