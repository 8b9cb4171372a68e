package agent

import (
	"github.com/molecule-ai/pull-agent/agent/state"
	"os"
	"sort"
	"time"
)

// Document builds the state document from the agent's state.
func (a *Agent) Document() state.StateDoc {
	s := a.Snapshot()
	a.mu.Lock()
	hosts := make(map[string]state.HostDoc, len(a.hostInfo))
	for h, hd := range a.hostInfo {
		hosts[h] = hd
	}
	lastReconcile := a.lastReconcile
	a.mu.Unlock()

	doc := state.StateDoc{SchemaVersion: state.SchemaVersion, WrittenAt: time.Now().UTC()}
	ad := state.AgentDoc{
		Version: a.opts.Version, PID: os.Getpid(), StartedAt: a.started.UTC(), EnvFile: a.opts.EnvFile,
		ConfigLoadedAt: tp(s.ConfigAt), ConfigOK: s.Config != nil && s.ConfigError == "", ConfigError: s.ConfigError,
		DockerUp: s.DaemonUp, LastReconcile: tp(lastReconcile), NextRefresh: tp(s.NextRefresh),
		Warm: s.Warm(), Total: len(s.Images),
	}
	if s.Config != nil {
		ad.Prefix, ad.Platform = s.Config.Prefix, s.Config.Platform
	}
	doc.Agent = ad
	for _, i := range s.Images {
		h := i.Image.Host()
		if _, ok := hosts[h]; !ok {
			hosts[h] = state.HostDoc{Host: h, CredentialSource: a.describeHost(h)}
		}
		doc.Images = append(doc.Images, imageDoc(i))
	}
	for h, until := range s.Cooldowns {
		hd := hosts[h]
		hd.Host, hd.CooldownUntil = h, tp(until)
		hosts[h] = hd
	}
	for _, hd := range hosts {
		doc.Hosts = append(doc.Hosts, hd)
	}
	sort.Slice(doc.Hosts, func(i, j int) bool { return doc.Hosts[i].Host < doc.Hosts[j].Host })
	return doc
}

func imageDoc(i ImageStatus) state.ImageDoc {
	d := state.ImageDoc{
		Runtime: i.Image.Runtime, Image: i.Image.Ref, State: i.State, PinnedDigest: i.Image.Pin.String(), Alias: i.Alias,
		LocalDigest: i.Digest.String(), RemoteDigest: i.RemoteDigest.String(), ImageID: i.ImageID, SizeBytes: i.Size,
		LastAttempt: tp(i.LastAttempt), LastSuccess: tp(i.LastSuccess), Attempts: i.Attempts,
		LastDurationS: i.Duration.Seconds(), LastBytes: i.Bytes, LastErrorClass: string(i.LastClass), LastError: i.LastError,
	}
	if i.InFlight {
		if d.State != state.Warm && d.State != state.Stale {
			d.State = state.Pulling
		}
		d.Progress = &state.ProgressDoc{Phase: string(i.Progress.Phase), Bytes: i.Progress.Current, TotalBytes: i.Progress.Total, Layers: i.Progress.Layers, LayersDone: i.Progress.LayersDone}
	} else if i.Due {
		d.NextAttempt = tp(i.NextAttempt)
	}
	return d
}

func tp(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	u := t.UTC()
	return &u
}
