package agent

import (
	"os"
	"sort"
	"time"

	"github.com/molecule-ai/pull-agent/agent/config"
	"github.com/molecule-ai/pull-agent/agent/state"
)

// Document builds the state document from the agent's published view.
func (a *Agent) Document() state.StateDoc {
	return a.view.Load().document(a, a.opts.Clock.Now())
}

// document is the state document of v, written at now.
func (v *view) document(a *Agent, now time.Time) state.StateDoc {
	s := v.snapshot()
	ad := state.AgentDoc{
		Version: a.opts.Version, PID: os.Getpid(), StartedAt: a.started.UTC(), EnvFile: a.opts.EnvFile,
		ConfigLoadedAt: tp(s.ConfigAt), ConfigOK: s.Config != nil && s.ConfigError == "", ConfigError: s.ConfigError,
		DockerUp: s.DaemonUp, LastReconcile: tp(v.lastReconcile), NextRefresh: tp(s.NextRefresh),
		Warm: s.Warm(), Total: len(s.Images),
	}
	if s.Flip != nil {
		ad.Flip = &state.FlipDoc{To: s.Flip.To, At: s.Flip.At.UTC()}
	}
	if s.Config != nil {
		ad.Prefix, ad.Platform, ad.Fallbacks = s.Config.Prefix, s.Config.Platform, s.Config.Fallbacks
	}
	doc := state.StateDoc{SchemaVersion: state.SchemaVersion, WrittenAt: now.UTC(), Agent: ad}
	hosts := make(map[string]state.HostDoc, len(v.hosts))
	for _, i := range s.Images {
		h := i.Image.Host()
		hosts[h] = v.hosts[h]
		doc.Images = append(doc.Images, imageDoc(i))
	}
	if s.Config != nil {
		// Fallback hosts a pull has used, with their credentials.
		for _, p := range s.Config.Fallbacks {
			if img, err := (config.Image{Runtime: "x"}).Under(p); err == nil {
				if hd, ok := v.hosts[img.Host()]; ok {
					hosts[img.Host()] = hd
				}
			}
		}
	}
	for h, until := range s.Cooldowns {
		hd := hosts[h]
		hd.CooldownUntil = tp(until)
		hosts[h] = hd
	}
	for h, hd := range hosts {
		hd.Host = h
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
		Source: i.Source, FallbackImage: i.FallbackRef,
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
